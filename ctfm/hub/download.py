"""Files of a model repo on the Hugging Face Hub, from huggingface_hub's cache or downloaded.

Environment: ``HF_ENDPOINT`` and ``HF_HUB_OFFLINE`` are read on every call (huggingface_hub itself reads them once,
at import), so setting them later still takes effect. The cache is huggingface_hub's (``HF_HUB_CACHE``/``HF_HOME``)
unless ``cache_dir`` is given. An unreachable Hub fails after one attempt, with an error saying how to provide the
files instead.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctfm.errors import ModelLoadError
from ctfm.hub.format import CONFIG_NAME, WEIGHTS_NAME, read_config
from ctfm.hub.registry import ModelSpec


def hub_files(
    spec: ModelSpec | None,
    repo_id: str,
    *,
    revision: str | None,
    cache_dir: str | os.PathLike | None,
    local_files_only: bool | None,
) -> tuple[Path, dict[str, Any] | None]:
    """Weights and (when the repo has one) config of a Hub repo, from the cache or downloaded."""
    if spec is not None:
        repo_id = spec.repo_id
    offline = local_files_only if local_files_only is not None else _offline_from_env()
    fetch = _HubFetch(spec.name if spec else repo_id, repo_id, revision, cache_dir, offline)
    weights = fetch(WEIGHTS_NAME)
    config_path = fetch.optional(CONFIG_NAME)
    return weights, read_config(config_path) if config_path is not None else None


def _offline_from_env() -> bool:
    from huggingface_hub import constants

    return os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"} or constants.HF_HUB_OFFLINE


class _AbsentFile(ModelLoadError):
    """The repo (or the cache, offline) has no such file: fatal for the weights, not for ``config.json``."""


@dataclass(frozen=True)
class _HubFetch:
    """One model's files from the Hub, with errors that say what is missing and how to provide it."""

    label: str
    repo_id: str
    revision: str | None
    cache_dir: str | os.PathLike | None
    offline: bool

    def __call__(self, filename: str) -> Path:
        from huggingface_hub import constants, get_hf_file_metadata, hf_hub_download, hf_hub_url, try_to_load_from_cache
        from huggingface_hub.utils import EntryNotFoundError, LocalEntryNotFoundError

        endpoint = os.environ.get("HF_ENDPOINT", "").rstrip("/") or None
        cache_dir = None if self.cache_dir is None else str(self.cache_dir)
        arguments = {"revision": self.revision, "cache_dir": cache_dir, "endpoint": endpoint}
        if self.offline:
            try:
                return Path(hf_hub_download(self.repo_id, filename, local_files_only=True, **arguments))  # type: ignore[call-overload]
            except LocalEntryNotFoundError as err:
                reason = "offline (HF_HUB_OFFLINE or local_files_only) and not in the cache"
                raise self._error(filename, reason, absent=True) from err
        try:
            if not isinstance(try_to_load_from_cache(self.repo_id, filename, cache_dir, self.revision), str):
                # Not cached: ask once, without retries. hf_hub_download would retry a refused connection with
                # back-off for half a minute before failing; with a cached copy it falls back to it at once.
                url = hf_hub_url(self.repo_id, filename, revision=self.revision, endpoint=endpoint)
                get_hf_file_metadata(url, timeout=constants.HF_HUB_ETAG_TIMEOUT, endpoint=endpoint)
            return Path(hf_hub_download(self.repo_id, filename, **arguments))  # type: ignore[call-overload]
        except LocalEntryNotFoundError as err:  # the Hub stopped answering between the check and the download
            raise self._error(filename, _reason(err, endpoint or constants.ENDPOINT, self.revision)) from err
        except EntryNotFoundError as err:
            raise self._error(filename, f"the repo has no file {filename}", absent=True) from err
        except Exception as err:  # the network boundary: httpx/requests, HTTP and OS errors differ across versions
            raise self._error(filename, _reason(err, endpoint or constants.ENDPOINT, self.revision)) from err

    def optional(self, filename: str) -> Path | None:
        """The file, or None when the repo (or, offline, the cache) does not have it."""
        try:
            return self(filename)
        except _AbsentFile:
            return None

    def _error(self, filename: str, reason: str, *, absent: bool = False) -> ModelLoadError:
        from huggingface_hub import constants

        cache = Path(self.cache_dir) if self.cache_dir is not None else Path(constants.HF_HUB_CACHE)
        return (_AbsentFile if absent else ModelLoadError)(
            f"cannot load model {self.label!r} (Hugging Face repo {self.repo_id!r}, file {filename}): {reason}. "
            f"Cache searched: {cache}. To load it without the Hub: pass ctfm.load a local path (a directory with "
            f"{CONFIG_NAME} and {WEIGHTS_NAME}, or a .safetensors file); or fill a Hugging Face cache on a connected "
            f"machine (`hf download {self.repo_id}`), copy it here and point HF_HOME or cache_dir at it; or set "
            "HF_ENDPOINT to a reachable Hub mirror."
        )


def _reason(err: Exception, endpoint: str, revision: str | None) -> str:
    from huggingface_hub.utils import RepositoryNotFoundError, RevisionNotFoundError

    if isinstance(err, RevisionNotFoundError):
        return f"{endpoint} has no revision {revision!r} of it"
    if isinstance(err, RepositoryNotFoundError):
        return f"{endpoint} has no such repo (or it is private or gated)"
    detail = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"download from {endpoint} failed ({type(err).__name__}{': ' + detail if detail else ''})"
