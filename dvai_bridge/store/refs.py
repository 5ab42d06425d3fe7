"""Model references: the one grammar for naming a model, parsed in one place.

    ./my-model/                              local MLX checkpoint folder        local-dir
    ./my-model.gguf                          local GGUF file                    local-gguf
    org/name   org/name@rev                  Hugging Face repo (MLX)            hf-repo
    org/name/file.gguf  org/name@rev/f.gguf  one GGUF file of an HF repo        hf-file
    hf://org/name[@rev][/file.gguf]          the same, as an HF URI
    https://huggingface.co/org/name/resolve/main/file.gguf  (an HF file URL)    hf-file
    https://example.com/x.gguf[#sha256=HEX]  a GGUF anywhere else               url

A local path wins over a repo id of the same spelling. A sha256 can come with any GGUF
reference (``#sha256=`` on a URL, or the ``sha256`` argument).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit

from ..errors import ConfigurationInvalid
from .locations import hf_endpoint

if TYPE_CHECKING:
    from huggingface_hub import HfUri

RefKind = Literal["local-dir", "local-gguf", "hf-repo", "hf-file", "url"]

_REPO_LIKE = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+(@\S+)?(/\S+)?$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")

GRAMMAR = (
    "an MLX folder, a .gguf file, an HF repo id (org/name[@revision]), "
    "org/name[@revision]/file.gguf, or a URL to a .gguf file"
)


@dataclass(frozen=True)
class ModelRef:
    kind: RefKind
    text: str  # as given
    repo_id: str | None = None
    revision: str | None = None  # None: the default branch
    filename: str | None = None  # path in the repo (hf-file)
    url: str | None = None
    sha256: str | None = None
    path: Path | None = None  # local kinds

    @property
    def format(self) -> Literal["mlx", "gguf"]:
        return "mlx" if self.kind in ("local-dir", "hf-repo") else "gguf"

    @property
    def remote(self) -> bool:
        return self.kind in ("hf-repo", "hf-file", "url")

    @property
    def canonical(self) -> str:
        """The reference spelled the one way the store lists it."""
        if self.kind in ("hf-repo", "hf-file"):
            base = f"{self.repo_id}@{self.revision}" if self.revision else str(self.repo_id)
            return f"{base}/{self.filename}" if self.kind == "hf-file" else base
        if self.kind == "url":
            return str(self.url)
        return str(self.path)


def _sha256(value: str | None) -> str | None:
    if value is None or value == "":
        return None
    value = value.strip().lower()
    if not _SHA256.match(value):
        raise ConfigurationInvalid(f"sha256 must be 64 hex digits, got {value!r}.", param="sha256")
    return value


def _from_hf_uri(text: str, uri: HfUri, sha256: str | None) -> ModelRef:
    repo_type, repo_id = uri.type, uri.id
    revision, path = uri.revision, uri.path_in_repo or ""
    if repo_type != "model":
        raise ConfigurationInvalid(
            f"{text!r} names a {repo_type} repo; models only.", param="model_path"
        )
    if not path:
        if sha256:
            raise ConfigurationInvalid(
                "A sha256 belongs to a single .gguf file, not a repo.", param="sha256"
            )
        return ModelRef("hf-repo", text, repo_id=repo_id, revision=revision or None)
    if not path.lower().endswith(".gguf"):
        raise ConfigurationInvalid(
            f"{text!r} names the file {path!r}; a file reference must be a .gguf. Give {GRAMMAR}.",
            param="model_path",
        )
    return ModelRef(
        "hf-file", text, repo_id=repo_id, revision=revision or None, filename=path, sha256=sha256
    )


def parse_reference(text: str, sha256: str | None = None) -> ModelRef:
    """Parse a model reference; raises ``ConfigurationInvalid`` naming the grammar."""
    from huggingface_hub import parse_hf_uri

    raw = text
    text = text.strip()
    if not text:
        raise ConfigurationInvalid(f"Empty model reference; give {GRAMMAR}.", param="model_path")
    sha = _sha256(sha256)

    path = Path(text).expanduser()
    if path.is_dir():
        return ModelRef("local-dir", raw, path=path.resolve())
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ConfigurationInvalid(
                f"{text} is a file but not a .gguf; give {GRAMMAR}.", param="model_path"
            )
        return ModelRef("local-gguf", raw, path=path.resolve(), sha256=sha)

    scheme = urlsplit(text).scheme.lower()
    if scheme in ("http", "https"):
        base, _, fragment = text.partition("#")
        if fragment.startswith("sha256="):
            from_fragment = _sha256(fragment[len("sha256=") :])
            if sha and from_fragment != sha:
                raise ConfigurationInvalid(
                    "Two different sha256 values were given.", param="sha256"
                )
            sha = from_fragment
        try:
            web: HfUri | None = parse_hf_uri(base, endpoint=hf_endpoint())
        except Exception:
            web = None
        if web is not None and web.path_in_repo:
            return _from_hf_uri(raw, web, sha)
        if not urlsplit(base).path.lower().endswith(".gguf"):
            raise ConfigurationInvalid(
                f"{base!r} does not point to a .gguf file; a URL reference must. Give {GRAMMAR}.",
                param="model_path",
            )
        return ModelRef("url", raw, url=base, sha256=sha)
    if scheme == "hf":
        try:
            uri = parse_hf_uri(text)
        except Exception as exc:
            raise ConfigurationInvalid(
                f"Invalid HF URI {text!r}: {exc}", param="model_path"
            ) from None
        return _from_hf_uri(raw, uri, sha)

    name = text.split("@")[0].split("/")[1] if "/" in text else ""
    if _REPO_LIKE.match(text) and not name.lower().endswith(".gguf"):
        try:
            uri = parse_hf_uri("hf://" + text)
        except Exception as exc:
            raise ConfigurationInvalid(
                f"Invalid HF reference {text!r}: {exc}", param="model_path"
            ) from None
        return _from_hf_uri(raw, uri, sha)
    raise ConfigurationInvalid(f"Model {text!r} not found: give {GRAMMAR}.", param="model_path")


def is_remote_reference(text: str) -> bool:
    """True for references the store fetches (HF repo, HF file, URL); False for local paths
    and for text that is no reference at all."""
    try:
        return parse_reference(text).remote
    except ConfigurationInvalid:
        return False
