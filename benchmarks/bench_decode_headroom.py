"""Where a decoded token's time goes: our model's forward against the same weights run through torch functions alone.

    python benchmarks/bench_decode_headroom.py [--tokens 32] [--context 100] [--repeats 15] [--threads 2]

On the small configuration (hidden 256, 4 MoT layers, float32, CPU) a context of `--context` random text tokens is
written into a `LoomCache`; from it three decoders produce `--tokens` greedy tokens each, one token per forward:

- `model`: `LoomForInterleavedGeneration.forward` on one token at a time with the cache (the modules, transformers'
  attention interface, rotary and cache classes, the experts' routing);
- `functional`: the same weights through torch functions only (`F.embedding`, `F.rms_norm`, `F.linear`, the rotary
  arithmetic, `F.scaled_dot_product_attention`, keys and values appended by `torch.cat`): what any eager decode of
  these weights has to run, without modules or wrappers. Its tokens must equal the model's (checked first, over at
  least 8 tokens, so that a wrong position or rotary shows);
- `linears`: the linear layers alone, on a decoded token's shapes (29 per token here): the floor no eager decode path
  on the same matrix library goes below.

The three take turns (the order rotates from one repeat to the next); reported are the median milliseconds per token
of each and the median of the per-repeat ratios model / functional and linears / model. The official BAGEL code runs
the same Qwen2 modules as the model (`bench_official.py`: about the model's speed per token), so model / functional
bounds what an eager decode path could gain over it by leaving the module structure, and the linears' share what is
left to any path.
"""

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from loom_hf import LoomCache, LoomForInterleavedGeneration
from loom_hf.tiny import SMALL_TEXT_CONFIG, tiny_config, tiny_tokenizer


def small_model(seed: int) -> LoomForInterleavedGeneration:
    torch.manual_seed(seed)
    config = tiny_config(tiny_tokenizer(), text_config=SMALL_TEXT_CONFIG)
    return LoomForInterleavedGeneration(config).eval()


def model_decode(model, cache: LoomCache, last: torch.Tensor, tokens: int) -> list[int]:
    cache, token, out = cache.fork(), last, []
    for _ in range(tokens):
        logits = model(input_ids=token, past_key_values=cache, use_cache=True, logits_to_keep=1).logits
        token = logits[:, -1:].argmax(-1)
        out.append(int(token))
    return out


class FunctionalDecoder:
    """The model's understanding weights, decoded with torch functions only (no module is called)."""

    def __init__(self, model: LoomForInterleavedGeneration):
        text = model.config.text_config
        self.lm = model.model.language_model
        self.lm_head = model.lm_head.weight
        self.heads, self.kv_heads = text.num_attention_heads, text.num_key_value_heads
        self.head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        self.eps = text.rms_norm_eps
        self.inv_freq = self.lm.rotary_emb.inv_freq
        self.rope_scaling = self.lm.rotary_emb.attention_scaling

    def norm(self, hidden: torch.Tensor, module) -> torch.Tensor:
        weight = getattr(module, "weight", None)
        if weight is None:  # no q/k norm in this configuration
            return hidden
        return F.rms_norm(hidden, hidden.shape[-1:], weight, eps=self.eps)

    def rotate(self, states: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = states.shape[-1] // 2
        return states * cos + torch.cat([-states[..., half:], states[..., :half]], dim=-1) * sin

    def __call__(self, cache: LoomCache, last: torch.Tensor, tokens: int) -> list[int]:
        keys = [layer.keys for layer in cache.layers]
        values = [layer.values for layer in cache.layers]
        position, token, out = int(cache.next_position), last, []
        for _ in range(tokens):
            hidden = F.embedding(token, self.lm.embed_tokens.weight)
            freqs = position * self.inv_freq
            angles = torch.cat([freqs, freqs])
            cos, sin = angles.cos() * self.rope_scaling, angles.sin() * self.rope_scaling
            for index, layer in enumerate(self.lm.layers):
                attention, mlp = layer.self_attn, layer.mlp
                normed = self.norm(hidden, layer.input_layernorm)
                query = F.linear(normed, attention.q_proj.weight, attention.q_proj.bias).view(1, 1, self.heads, -1)
                key = F.linear(normed, attention.k_proj.weight, attention.k_proj.bias).view(1, 1, self.kv_heads, -1)
                value = F.linear(normed, attention.v_proj.weight, attention.v_proj.bias).view(1, 1, self.kv_heads, -1)
                query = self.rotate(self.norm(query, attention.q_norm).transpose(1, 2), cos, sin)
                key = self.rotate(self.norm(key, attention.k_norm).transpose(1, 2), cos, sin)
                keys[index] = torch.cat([keys[index], key], dim=2)
                values[index] = torch.cat([values[index], value.transpose(1, 2)], dim=2)
                attended = F.scaled_dot_product_attention(
                    query, keys[index], values[index], scale=attention.scaling, enable_gqa=True
                )
                hidden = hidden + F.linear(attended.transpose(1, 2).reshape(1, 1, -1), attention.o_proj.weight)
                normed = self.norm(hidden, layer.post_attention_layernorm)
                gated = F.silu(F.linear(normed, mlp.gate_proj.weight)) * F.linear(normed, mlp.up_proj.weight)
                hidden = hidden + F.linear(gated, mlp.down_proj.weight)
            token = F.linear(self.norm(hidden, self.lm.norm), self.lm_head).argmax(-1)
            out.append(int(token))
            position += 1
        return out


def linear_layers(model: LoomForInterleavedGeneration) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """(weight, bias) of every linear layer a decoded token runs, in order."""
    layers = []
    for layer in model.model.language_model.layers:
        attention, mlp = layer.self_attn, layer.mlp
        for linear in (attention.q_proj, attention.k_proj, attention.v_proj, attention.o_proj):
            layers.append((linear.weight, linear.bias))
        for linear in (mlp.gate_proj, mlp.up_proj, mlp.down_proj):
            layers.append((linear.weight, None))
    layers.append((model.lm_head.weight, None))
    return layers


def linears_only(layers, tokens: int) -> None:
    inputs = {weight.shape[1]: torch.randn(1, 1, weight.shape[1]) for weight, _ in layers}
    for _ in range(tokens):
        for weight, bias in layers:
            F.linear(inputs[weight.shape[1]], weight, bias)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--context", type=int, default=100, help="text tokens in the cache before decoding")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for name, least in (("tokens", 8), ("context", 1), ("repeats", 1), ("threads", 1)):
        if getattr(args, name) < least:
            parser.error(f"--{name} must be at least {least}")
    torch.set_num_threads(args.threads)

    with torch.no_grad():
        model = small_model(args.seed)
        vocab = model.config.text_config.vocab_size
        prompt = torch.randint(0, vocab, (1, args.context), generator=torch.Generator().manual_seed(args.seed))
        cache = LoomCache()
        model(input_ids=prompt, past_key_values=cache, use_cache=True)
        last = prompt[:, -1:]
        functional, layers = FunctionalDecoder(model), linear_layers(model)
        ours = model_decode(model, cache, last, args.tokens)
        if functional(cache, last, args.tokens) != ours:
            raise SystemExit("the functional decoder's tokens differ from the model's: the comparison is void")

        sides = {
            "model": lambda: model_decode(model, cache, last, args.tokens),
            "functional": lambda: functional(cache, last, args.tokens),
            "linears": lambda: linears_only(layers, args.tokens),
        }
        times = {name: [] for name in sides}
        for repeat in range(args.repeats + 1):  # the first round warms up
            order = list(sides.items())
            shift = repeat % len(order)
            for name, call in order[shift:] + order[:shift]:
                start = time.perf_counter()
                call()
                if repeat:
                    times[name].append((time.perf_counter() - start) / args.tokens * 1e3)

    per_token = {name: round(statistics.median(values), 3) for name, values in times.items()}
    model_over_functional = sorted(m / f for m, f in zip(times["model"], times["functional"]))
    linear_share = [lin / m for lin, m in zip(times["linears"], times["model"])]
    print(
        json.dumps(
            {
                "threads": args.threads,
                "tokens": args.tokens,
                "context": args.context,
                "linear_layers_per_token": len(layers),
                "ms_per_token": per_token,
                "model_over_functional": round(statistics.median(model_over_functional), 2),
                "model_over_functional_range": [round(model_over_functional[i], 2) for i in (0, -1)],
                "linears_share_of_model": round(statistics.median(linear_share), 2),
            }
        )
    )


if __name__ == "__main__":
    main()
