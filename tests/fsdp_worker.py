"""One Loom training step under FSDP2 on two CPU processes, checked against the same step unsharded.

Run by `test_trainer.py` with `torch.distributed.run --nproc_per_node 2`. Every decoder and ViT layer named in
`examples/accelerate/fsdp.yaml` becomes its own shard unit, as accelerate wraps them on GPUs (accelerate itself runs
FSDP on GPUs only). Both processes train the same packed batch, so the averaged sharded gradients must equal the
gradients of one unsharded step. Rank 0 writes the comparison as JSON to the path given as the only argument.
"""

import copy
import json
import sys
import tempfile
from pathlib import Path

import torch
import yaml
from torch.distributed.fsdp import FSDPModule, fully_shard

from loom_hf.data import build_dataset
from loom_hf.tiny import tiny_pipeline
from loom_hf.trainers import LoomDataCollator, LoomTrainer, LoomTrainingArguments, LoomTrainingDataset
from loom_hf.trainers.trainer import _ce_count, _mse_count

CONFIG = Path(__file__).resolve().parents[1] / "examples" / "accelerate" / "fsdp.yaml"


def loss_and_gradients(trainer: LoomTrainer, model: torch.nn.Module, batch: dict, counts: torch.Tensor):
    torch.manual_seed(1)  # the same flow times and noise in both runs
    loss = trainer.compute_loss(model, copy.copy(batch), num_items_in_batch=counts)
    loss.backward()
    gradients = {}
    for name, parameter in model.named_parameters():
        gradient = parameter.grad
        if gradient is not None and hasattr(gradient, "full_tensor"):
            gradient = gradient.full_tensor()
        gradients[name] = gradient
    return float(loss.detach()), gradients


def main(result_path: str) -> None:
    pipe = tiny_pipeline(seed=0, max_frames=8)
    collator = LoomDataCollator(pipe.processor, text_dropout=0, vit_dropout=0, vae_dropout=0)
    torch.manual_seed(0)
    dataset = LoomTrainingDataset(build_dataset(8, seed=0)["train"], collator, max_tokens=1024, max_frames=8)
    arguments = LoomTrainingArguments(output_dir=tempfile.mkdtemp(), use_cpu=True, report_to=[])
    trainer = LoomTrainer(model=pipe.model, args=arguments, vae=pipe.vae, train_dataset=dataset, data_collator=collator)
    world_size = trainer.accelerator.num_processes
    batch = collator([dataset[i] for i in range(3)])
    # Counts of the whole step: every process holds the same batch.
    counts = world_size * torch.stack([_ce_count(batch["labels"]), _mse_count(batch)])

    reference = copy.deepcopy(pipe.model).train()
    expected_loss, expected = loss_and_gradients(trainer, reference, batch, counts)

    config = yaml.safe_load(CONFIG.read_text())["fsdp_config"]
    wrapped = set(config["fsdp_transformer_layer_cls_to_wrap"].split(","))
    model = pipe.model.train()
    layers = [module for module in model.modules() if type(module).__name__ in wrapped]
    layer_names = sorted(type(layer).__name__ for layer in layers)
    for layer in layers:
        fully_shard(layer, reshard_after_forward=config["fsdp_reshard_after_forward"])
    fully_shard(model)
    sharded_loss, sharded = loss_and_gradients(trainer, model, batch, counts)

    if trainer.accelerator.process_index == 0:
        differences = {
            name: float((sharded[name] - expected[name]).abs().max()) for name in expected if expected[name] is not None
        }
        result = {
            "wrapped_layers": layer_names,
            "shard_units": sum(isinstance(module, FSDPModule) for module in model.modules()),
            "sharded_parameters": all(hasattr(parameter, "full_tensor") for parameter in model.parameters()),
            "loss_tokens": counts.tolist(),
            "loss": [sharded_loss, expected_loss],
            "gradients": len(differences),
            "missing_gradients": [name for name in expected if expected[name] is not None and sharded[name] is None],
            "max_gradient_difference": max(differences.values()),
            "max_gradient": max(float(gradient.abs().max()) for gradient in expected.values() if gradient is not None),
        }
        Path(result_path).write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])
