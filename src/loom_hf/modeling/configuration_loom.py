"""Configurations of the Loom model: the MoT language model, the NaViT vision tower and the composite."""

from huggingface_hub.dataclasses import strict
from transformers import Qwen2Config
from transformers.configuration_utils import PreTrainedConfig

__all__ = ["LoomTextConfig", "LoomVisionConfig", "LoomConfig"]


@strict
class LoomTextConfig(Qwen2Config):
    r"""
    Qwen2 decoder turned into a Mixture-of-Transformers: every projection, q/k norm, MLP and layer norm has a
    generation twin (`*_moe_gen`) that serves VAE-latent tokens, while text and ViT tokens use the original
    ("understanding") weights. Both experts share one attention over the joint sequence. Defaults are those of
    BAGEL-7B-MoT (Qwen2.5-7B).

    Args:
        qk_norm (`bool`, defaults to `True`):
            Per-head RMSNorm on queries and keys before RoPE (BAGEL forces it on).
    """

    model_type = "loom_text"
    base_config_key = "text_config"

    vocab_size: int = 152064
    hidden_size: int = 3584
    intermediate_size: int = 18944
    num_hidden_layers: int = 28
    num_attention_heads: int = 28
    num_key_value_heads: int | None = 4
    qk_norm: bool = True

    def __post_init__(self, **kwargs):
        if self.use_sliding_window:
            raise ValueError(
                "`use_sliding_window=True` is not supported: Loom's attention (BAGEL's) always attends over the whole "
                "context and would ignore the window. Set `use_sliding_window=False`."
            )
        if self.rope_parameters is None and "rope_theta" not in kwargs:
            kwargs["rope_theta"] = 1_000_000.0
        super().__post_init__(**kwargs)


@strict
class LoomVisionConfig(PreTrainedConfig):
    r"""
    SigLIP vision tower in BAGEL's NaViT form: packed images of any size, a linear patch embedding over flattened
    `(patch_row, patch_col, channel)` patches, learned positions on a `max_num_patches_per_side`² grid (an image
    uses its top-left sub-grid), transformers' `SiglipEncoder` and a final `post_layernorm`, no pooling head. Defaults
    are BAGEL's siglip-so400m-14-980 truncated to 26 layers.

    The fields are those this tower reads. SigLIP's `image_size` (the position grid is `max_num_patches_per_side`
    instead) and `vision_use_head` (there is no head) are not among them; a saved config that still holds them loads,
    and keeps them as unused extra keys.

    Args:
        hidden_size / intermediate_size / num_hidden_layers / num_attention_heads / hidden_act / layer_norm_eps /
            attention_dropout: the SigLIP encoder's sizes, as in `SiglipVisionConfig`.
        num_channels (`int`, defaults to 3) / patch_size (`int`, defaults to 14): channels and side of a patch.
        max_num_patches_per_side (`int`, defaults to 70):
            Side of the learned position grid; images are limited to `max_num_patches_per_side * patch_size` pixels
            per side.
    """

    model_type = "loom_vision"
    base_config_key = "vision_config"

    hidden_size: int = 1152
    intermediate_size: int = 4304
    num_hidden_layers: int = 26
    num_attention_heads: int = 16
    num_channels: int = 3
    patch_size: int = 14
    hidden_act: str = "gelu_pytorch_tanh"
    layer_norm_eps: float = 1e-6
    attention_dropout: float | int = 0.0
    max_num_patches_per_side: int = 70


@strict
class LoomConfig(PreTrainedConfig):
    r"""
    Composite configuration of [`LoomForInterleavedGeneration`]: BAGEL's MoT decoder, NaViT ViT, connector and
    latent heads, plus Loom's temporal frame embedding.

    Args:
        text_config ([`LoomTextConfig`] or `dict`, *optional*): the MoT language model.
        vision_config ([`LoomVisionConfig`] or `dict`, *optional*): the ViT used for understanding tokens.
        latent_channels (`int`, defaults to 16): channels of the VAE latent space.
        latent_patch_size (`int`, defaults to 2): side of the latent patch that becomes one token.
        vae_downsample (`int`, defaults to 8): pixels per latent pixel along one side (the VAE's compression).
        max_latent_size (`int`, defaults to 64): side of the latent-token position grid (64 tokens of 16 px: 1024 px).
        connector_act (`str`, defaults to `"gelu_pytorch_tanh"`): activation of the ViT-to-LLM connector.
        max_frames (`int`, defaults to 0):
            Size of Loom's learnable temporal frame table; frame `t` adds row `t` to its visual tokens. 0 disables it
            and leaves BAGEL's numerics untouched.
        image_token_id (`int`): placeholder id at the positions of ViT and latent tokens in `input_ids`.
        vision_start_token_id / vision_end_token_id (`int`): markers around every image block.
        entity_token_ids (`list[int]`): ids of Loom's entity tokens (`<upper>`, `<style>`, ...), set by
            `add_entity_tokens`.
    """

    model_type = "loom"
    sub_configs_defaults = {"text_config": LoomTextConfig, "vision_config": LoomVisionConfig}

    text_config: dict | PreTrainedConfig | None = None
    vision_config: dict | PreTrainedConfig | None = None
    latent_channels: int = 16
    latent_patch_size: int = 2
    vae_downsample: int = 8
    max_latent_size: int = 64
    connector_act: str = "gelu_pytorch_tanh"
    max_frames: int = 0
    image_token_id: int = 151655
    vision_start_token_id: int = 151652
    vision_end_token_id: int = 151653
    entity_token_ids: list[int] | None = None
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        if self.entity_token_ids is None:
            self.entity_token_ids = []
        super().__post_init__(**kwargs)

    @property
    def latent_token_dim(self) -> int:
        """Size of one latent token: a `latent_patch_size`² patch of `latent_channels` channels."""
        return self.latent_patch_size**2 * self.latent_channels

    @property
    def latent_downsample(self) -> int:
        """Pixels per latent token along one side."""
        return self.vae_downsample * self.latent_patch_size
