"""Model cards of trained Loom models and pipelines, and the upload of a pipeline to the Hub."""

import os
import tempfile
from pathlib import Path

from huggingface_hub import CommitInfo, HfApi, ModelCard, ModelCardData

__all__ = ["loom_model_card", "loss_summary", "push_pipeline_to_hub"]

_TEMPLATE = """---
{{ card_data }}
---

# {{ model_id }}

{{ description }}

## Usage

```python
{{ usage }}
```

## Training

{{ training_table }}

### Loss

`loss` = `ce_loss_weight` · `ce_loss` + `mse_loss` (cross-entropy on plans and answers, flow-matching MSE on noised
latent tokens), each normalised by its token count.

{{ loss_table }}

## License

{{ license }}
"""

# Training arguments worth stating in a card, in this order.
_CARD_ARGUMENTS = (
    "learning_rate",
    "lr_scheduler_type",
    "warmup_steps",
    "max_steps",
    "num_train_epochs",
    "max_tokens_per_batch",
    "gradient_accumulation_steps",
    "world_size",
    "bf16",
    "seed",
    "ce_loss_weight",
    "max_history_frames",
    "history",
    "text_dropout",
    "vit_dropout",
    "vae_dropout",
    "timestep_shift",
    "train_experts",
    "ema_decay",
)


def loss_summary(log_history: list[dict], points: int = 5) -> str:
    """A markdown table of `loss`, `ce_loss` and `mse_loss` at a few evenly spaced logged steps, with the minimum."""
    logged = [entry for entry in log_history if "loss" in entry and "step" in entry]
    if not logged:
        return "No training loss was logged."
    names = [name for name in ("loss", "ce_loss", "mse_loss") if any(name in entry for entry in logged)]
    picks = sorted({round(i * (len(logged) - 1) / max(points - 1, 1)) for i in range(points)})
    rows = ["| step | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for index in picks:
        entry = logged[index]
        rows.append(
            f"| {entry['step']} | " + " | ".join(f"{entry.get(name, float('nan')):.4f}" for name in names) + " |"
        )
    minima = [min(entry[name] for entry in logged if name in entry) for name in names]
    rows.append("| min | " + " | ".join(f"{value:.4f}" for value in minima) + " |")
    return "\n".join(rows)


def _training_table(arguments: dict, extra: dict) -> str:
    rows = ["| argument | value |", "|---|---|"]
    for name in _CARD_ARGUMENTS:
        if name in arguments and arguments[name] is not None:
            rows.append(f"| {name} | {arguments[name]} |")
    rows += [f"| {name} | {value} |" for name, value in extra.items()]
    return "\n".join(rows)


def loom_model_card(
    model_id: str,
    *,
    base_model: str | None,
    datasets: list[str] | None,
    training_arguments: dict,
    log_history: list[dict],
    extra_arguments: dict | None = None,
    license: str = "apache-2.0",
    pipeline: bool = False,
) -> ModelCard:
    """The card of a trained model (or pipeline): base model, datasets, training arguments, loss curve, license."""
    data = ModelCardData(
        license=license,
        library_name="diffusers" if pipeline else "transformers",
        pipeline_tag="any-to-any",
        base_model=base_model,
        datasets=datasets,
        tags=["loom", "loom-hf", "bagel", "interleaved", "text-to-image", "image-editing"],
    )
    usage = (
        f'from loom_hf import LoomInterleavedPipeline\n\npipe = LoomInterleavedPipeline.from_pretrained("{model_id}")\n'
        'tutorial = pipe(["Draw a red house"], task="interleaved")\ntutorial.save("tutorial")'
        if pipeline
        else f'import loom_hf\nfrom transformers import AutoModel\n\nmodel = AutoModel.from_pretrained("{model_id}")'
    )
    description = (
        "A Loom model (interleaved text-image generation on the BAGEL architecture) trained with loom-hf's "
        "`LoomTrainer`"
        + (f" from `{base_model}`" if base_model else "")
        + (f" on {', '.join(f'`{name}`' for name in datasets)}" if datasets else "")
        + "."
    )
    return ModelCard.from_template(
        data,
        template_str=_TEMPLATE,
        model_id=model_id,
        description=description,
        usage=usage,
        training_table=_training_table(training_arguments, extra_arguments or {}),
        loss_table=loss_summary(log_history),
        license=f"Released under {license}, like BAGEL and Loom.",
    )


def push_pipeline_to_hub(
    pipe,
    repo_id: str,
    *,
    card: ModelCard,
    private: bool = True,
    token: str | None = None,
    commit_message: str = "Upload",
) -> CommitInfo:
    """Upload a pipeline with its card: saved into a fresh folder (exactly what is uploaded), then pushed."""
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        pipe.save_pretrained(folder)
        card.save(os.path.join(folder, "README.md"))
        return api.upload_folder(repo_id=repo_id, folder_path=str(Path(folder)), commit_message=commit_message)
