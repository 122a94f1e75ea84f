"""Sampling: prefill each prompt once, decode G samples per prompt in one compiled loop over a KV cache."""
from jaxr1.sampling.buckets import SamplerPrompts, bucket_gen_length, bucket_prompt_length, prepare_prompts
from jaxr1.sampling.functions import SamplingMode, sample_tokens
from jaxr1.sampling.generate import generate, make_spec
from jaxr1.sampling.layout import gather_params, place_prompts
from jaxr1.sampling.sampler import (CALLS, STOP_EOS, STOP_LENGTH, TRACES, DecodeSpec, SampleOutput, compile_count,
                                    sample)

__all__ = ["generate", "make_spec", "sample", "prepare_prompts", "SamplerPrompts", "DecodeSpec", "SampleOutput",
           "SamplingMode", "sample_tokens", "bucket_prompt_length", "bucket_gen_length", "compile_count", "TRACES",
           "CALLS", "STOP_EOS", "STOP_LENGTH", "gather_params", "place_prompts"]
