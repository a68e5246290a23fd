"""Denoising step that reads the cached context vs. one that recomputes the context every step.

    python benchmarks/bench_context_cache.py [--context-tokens 512] [--steps 20]

Both variants compute the same velocity (checked). Times are taken alternately in one process and reported as a
ratio of medians, so machine noise affects both sides alike.
"""

import argparse
import json
import statistics
import time

import torch

from loom_hf import LoomCache, TokenType
from loom_hf.tiny import tiny_pipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--context-tokens", type=int, default=512)
    parser.add_argument("--latent-grid", type=int, default=4, help="side of the generated image in latent tokens")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())

    pipe = tiny_pipeline(
        seed=0,
        text_config={
            "vocab_size": 432,
            "hidden_size": args.hidden_size,
            "intermediate_size": 4 * args.hidden_size,
            "num_hidden_layers": args.layers,
            "num_attention_heads": 8,
            "num_key_value_heads": 2,
            "max_position_embeddings": 4096,
        },
    )
    model, processor = pipe.model, pipe.processor
    torch.manual_seed(0)
    context = torch.randint(0, 380, (1, args.context_tokens))
    tokens = args.latent_grid**2
    block_ids, block_types = processor.image_block(tokens, TokenType.LATENT)
    latents = torch.randn(tokens, model.config.latent_token_dim)
    block = {
        "latents": latents,
        "latent_grid_hw": torch.tensor([[args.latent_grid] * 2]),
        "timesteps": torch.tensor([0.5]),
    }

    with torch.no_grad():
        cache = LoomCache()
        model(input_ids=context, past_key_values=cache)

        def cached_step():
            with cache.read_only():
                return model(
                    input_ids=torch.tensor([block_ids]),
                    mm_token_type_ids=torch.tensor([block_types]),
                    past_key_values=cache,
                    logits_to_keep=1,
                    **block,
                ).velocity

        full_ids = torch.cat([context, torch.tensor([block_ids])], dim=1)
        full_types = torch.cat([torch.zeros_like(context), torch.tensor([block_types])], dim=1)

        def recomputed_step():
            return model(input_ids=full_ids, mm_token_type_ids=full_types, logits_to_keep=1, **block).velocity

        torch.testing.assert_close(cached_step(), recomputed_step(), atol=1e-4, rtol=1e-4)
        cached_times, recomputed_times = [], []
        for _ in range(args.steps):
            for step, times in ((cached_step, cached_times), (recomputed_step, recomputed_times)):
                start = time.perf_counter()
                step()
                times.append(time.perf_counter() - start)

    cached, recomputed = statistics.median(cached_times), statistics.median(recomputed_times)
    result = {
        "context_tokens": args.context_tokens,
        "latent_tokens": tokens,
        "parameters": sum(p.numel() for p in model.parameters()),
        "cached_step_ms": round(1000 * cached, 2),
        "recomputed_step_ms": round(1000 * recomputed, 2),
        "speedup": round(recomputed / cached, 2),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
