"""Assemble the untrained default Loom pipeline: a caption tokenizer, the trained autoencoder and the committed config.

    python examples/default_model/build_pipeline.py --data runs/data --vae runs/vae --output runs/init

`loom_config.json` holds the model sizes (a ~6M-parameter MoT decoder, a 2-layer ViT, 64 px frames, an 8-frame
temporal table) and the image and sampling settings; the tokenizer is trained on the dataset's texts and the
special-token ids come from it. The model starts from random weights.
"""

import argparse
import json
from pathlib import Path

import datasets
import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler
from transformers import GenerationConfig

from loom_hf import LoomConfig, LoomForInterleavedGeneration, LoomImageProcessor, LoomInterleavedPipeline, LoomProcessor
from loom_hf.data.tokenizer import train_caption_tokenizer
from loom_hf.modeling.entity_tokens import add_entity_tokens

CONFIG = Path(__file__).with_name("loom_config.json")


def build(data: str, vae: str, config_file: str | Path = CONFIG, vocab_size: int = 1024, seed: int = 0):
    """The untrained pipeline described by `config_file`, with a tokenizer trained on `data`."""
    settings = json.loads(Path(config_file).read_text())
    tokenizer = train_caption_tokenizer(datasets.load_from_disk(data), vocab_size=vocab_size)
    sizes = settings.pop("image_sizes")
    processor = LoomProcessor(LoomImageProcessor(sizes["vae"], sizes["vit"]), tokenizer)
    sampling_shift = settings.pop("sampling_shift")
    autoencoder = AutoencoderKL.from_pretrained(vae)
    config = LoomConfig(
        **{**settings, "text_config": {**settings["text_config"], "vocab_size": len(tokenizer)}},
        latent_channels=autoencoder.config.latent_channels,
        image_token_id=processor.image_token_id,
        vision_start_token_id=processor.vision_start_token_id,
        vision_end_token_id=processor.vision_end_token_id,
    )
    torch.manual_seed(seed)
    model = LoomForInterleavedGeneration(config)
    add_entity_tokens(model, processor)
    model.generation_config = GenerationConfig(
        bos_token_id=processor.bos_token_id, eos_token_id=processor.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    return LoomInterleavedPipeline(model, autoencoder, FlowMatchEulerDiscreteScheduler(shift=sampling_shift), processor)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="the training dataset (save_to_disk folder)")
    parser.add_argument("--vae", required=True, help="the trained autoencoder (save_pretrained folder)")
    parser.add_argument("--output", required=True, help="where the pipeline is saved")
    parser.add_argument("--config", default=str(CONFIG), help="model sizes and image settings (JSON)")
    parser.add_argument("--vocab-size", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    pipe = build(args.data, args.vae, args.config, args.vocab_size, args.seed)
    pipe.save_pretrained(args.output)
    parameters = sum(p.numel() for p in pipe.model.parameters())
    print(f"Wrote {args.output}: {parameters / 1e6:.2f}M model parameters, vocabulary {len(pipe.processor.tokenizer)}")


if __name__ == "__main__":
    main()
