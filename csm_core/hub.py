"""Fetching a model from the Hugging Face hub, with errors that say what to do (gated models,
no token, offline)."""

from __future__ import annotations

from pathlib import Path

# Hub models that need an accepted licence (and a token) before they download.
GATED_MODELS = ("sesame/csm-1b",)


class HubUnavailable(OSError):
    """A hub model that could not be fetched; the message says what to do about it."""


def download_checkpoint(repo_id: str) -> Path:
    """The snapshot folder of a hub model's checkpoint files (cached by huggingface_hub)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "ckpt.pt"]))
    except GatedRepoError as exc:
        reason = "the hub refused this gated model to the token in use (or to no token)"
        raise HubUnavailable(_hub_advice(repo_id, reason, gated=True)) from exc
    except RepositoryNotFoundError as exc:
        reason = "the hub does not show it without a token (a gated or private repository) or it does not exist"
        raise HubUnavailable(_hub_advice(repo_id, reason, gated=repo_id in GATED_MODELS)) from exc
    except LocalEntryNotFoundError as exc:
        reason = "no copy in the local Hugging Face cache and the hub cannot be reached (offline or HF_HUB_OFFLINE=1)"
        raise HubUnavailable(_hub_advice(repo_id, reason, gated=repo_id in GATED_MODELS)) from exc
    except OSError as exc:  # connection errors, HTTP errors
        raise HubUnavailable(_hub_advice(repo_id, f"{type(exc).__name__}: {exc}", gated=repo_id in GATED_MODELS)) from exc


def _hub_advice(repo_id: str, reason: str, gated: bool) -> str:
    licence = (f"{repo_id} is a gated model: accept its licence at https://huggingface.co/{repo_id} while logged in, "
               "then give the server a token of that account (HF_TOKEN=hf_... or `huggingface-cli login`) and "
               "access to huggingface.co" if gated else
               f"if {repo_id} is gated or private, accept its licence on https://huggingface.co/{repo_id} and set "
               "HF_TOKEN=hf_...")
    return (f"cannot fetch {repo_id!r} from the Hugging Face hub: {reason}. {licence}; or download it where the "
            "hub is reachable and pass --model /path/to/dir (config.json and model.safetensors; Mimi and the "
            "tokenizer: --mimi-weights, --tokenizer). For a demo without weights: --model bench (random weights, "
            "noise).")
