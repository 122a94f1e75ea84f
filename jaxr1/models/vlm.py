"""The base every family's model shares: a vision tower and a text decoder, the embeddings with image features
scattered in, `forward` (pure, traceable, static shapes) and `__call__` (host preparation, then forward)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxr1.models.inputs import ModelInputs


class VisionLanguageModel(nnx.Module):
    """What the families' models share: `config`, `visual` (a `vision_tower`), `language_model` (a
    `text_decoder`), the embeddings with image features scattered in, `forward` and `__call__` (through the
    family's `prepare_inputs`). A family sets the three class attributes and `encode_images`."""
    vision_tower: type[nnx.Module]     # (vision config, dtype, rngs) -> the tower
    text_decoder: type[nnx.Module]     # (text config, tie_word_embeddings, dtype, rngs) -> the decoder
    prepare_inputs: staticmethod       # the family's host-side (cfg, input_ids, ...) -> (ModelInputs, deltas)

    def __init__(self, cfg, dtype=jnp.float32, rngs: nnx.Rngs | None = None):
        self.config = cfg
        self.visual = self.vision_tower(cfg.vision, dtype, rngs)
        self.language_model = self.text_decoder(cfg.text, cfg.tie_word_embeddings, dtype, rngs)

    @property
    def dtype(self):
        return self.language_model.embed[...].dtype

    @staticmethod
    def merged_features(image_features) -> jax.Array:
        """The flat merged image features [N, D] within what `encode_images` returns."""
        return image_features

    def embed(self, inputs: ModelInputs, image_features=None, *, remat: bool = False) -> jax.Array:
        """Token embeddings with the merged image features at the <|image_pad|> positions (a gather: static)."""
        embeds = self.language_model.embed_tokens(inputs.input_ids)
        if image_features is None and inputs.vision is not None:
            image_features = self.encode_images(inputs.vision, remat=remat)
        if image_features is None:
            return embeds
        picked = jnp.take(self.merged_features(image_features), jnp.maximum(inputs.image_index, 0), axis=0)
        return jnp.where((inputs.image_index >= 0)[..., None], picked.astype(embeds.dtype), embeds)

    def hidden_states(self, inputs: ModelInputs, *, remat: bool = False, collect_hidden: bool = False):
        out = self.language_model(self.embed(inputs, remat=remat), inputs.positions, inputs.attention_mask,
                                  remat=remat, collect_hidden=collect_hidden)
        return out if collect_hidden else out[0]

    def forward(self, inputs: ModelInputs) -> jax.Array:
        return self.language_model.logits(self.hidden_states(inputs))

    def __call__(self, input_ids, attention_mask=None, pixel_values=None, image_grid_thw=None) -> jax.Array:
        """Logits [B, T, V] from inputs exactly as the HF tokenizer / image processor produce them."""
        inputs, _ = self.prepare_inputs(self.config, input_ids, attention_mask, pixel_values, image_grid_thw)
        return _jit_forward(self, inputs)


@nnx.jit
def _jit_forward(model: VisionLanguageModel, inputs: ModelInputs) -> jax.Array:
    return model.forward(inputs)
