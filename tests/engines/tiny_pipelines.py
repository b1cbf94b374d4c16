"""Tiny random-weight diffusers pipelines of every family, built fully in code.

Nothing is downloaded: tokenizers are byte-level vocabularies without merges (one token per
character), processors are built from their classes, and every module is a real diffusers /
transformers class at toy size (see ``engines.md`` §7). ``save_*`` writes a pipeline folder that
the production loader reads through ``ModelSettings(weights=folder)``.

Also used by ``bench/diffusers_overhead.py`` and ``bench/gpu_klein.py`` (the tokenizer).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from tokenizers.pre_tokenizers import ByteLevel
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2TokenizerFast,
    Qwen2VLImageProcessor,
    Qwen3Config,
    Qwen3ForCausalLM,
)

BYTE_SYMBOLS = sorted(ByteLevel.alphabet())
QWEN_SPECIALS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>",
    "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>",
]  # fmt: skip
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _bpe_files(folder: Path, vocab: dict[str, int]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")  # no merges: one token per byte
    return folder


def clip_tokenizer(folder: Path) -> CLIPTokenizer:
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for sym in BYTE_SYMBOLS:
        vocab.setdefault(sym, len(vocab))
        vocab.setdefault(f"{sym}</w>", len(vocab))
    return CLIPTokenizer.from_pretrained(_bpe_files(folder, vocab), model_max_length=77)


def qwen_tokenizer(folder: Path) -> Qwen2TokenizerFast:
    vocab = {sym: i for i, sym in enumerate(BYTE_SYMBOLS)}
    tok = Qwen2TokenizerFast.from_pretrained(
        _bpe_files(folder, vocab),
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        unk_token=None,
    )
    tok.add_tokens(QWEN_SPECIALS, special_tokens=True)
    tok.chat_template = CHAT_TEMPLATE  # klein and Qwen call apply_chat_template
    return tok


def qwen_image_processor() -> Qwen2VLImageProcessor:
    # Small limits keep the vision tower's token count (and the test) tiny.
    return Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=28 * 28 * 64)


def tiny_clip_text(tok: CLIPTokenizer, layers: int) -> CLIPTextModel:
    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tok), bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=32,
            intermediate_size=37, num_attention_heads=4, num_hidden_layers=layers,
            projection_dim=32, max_position_embeddings=77,
        )
    )  # fmt: skip


def tiny_sd_inpaint(root: Path) -> Any:
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionInpaintPipeline,
        UNet2DConditionModel,
    )

    tok = clip_tokenizer(root / "clip-tok")
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=32, in_channels=9, out_channels=4,  # latents + masked-image latents + mask
        block_out_channels=(32, 64), layers_per_block=2, cross_attention_dim=32,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    )  # fmt: skip
    vae = AutoencoderKL(
        block_out_channels=[32, 64], latent_channels=4,
        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
    )  # fmt: skip
    return StableDiffusionInpaintPipeline(
        vae=vae, text_encoder=tiny_clip_text(tok, layers=5), tokenizer=tok, unet=unet,
        scheduler=DDIMScheduler(steps_offset=1),  # the default 0 emits a FutureWarning
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip


def tiny_klein(root: Path, *, vae_levels: int = 1, layers: int = 1, heads: int = 2) -> Any:
    """``vae_levels`` 4 gives the real 8x VAE downsampling (the benchmark's 512x512 stays at
    1024 tokens); 1 keeps 64x64 test images cheap."""
    from diffusers import (
        AutoencoderKLFlux2,
        FlowMatchEulerDiscreteScheduler,
        Flux2KleinPipeline,
        Flux2Transformer2DModel,
    )

    tok = qwen_tokenizer(root / "qwen-tok")
    torch.manual_seed(0)
    latent_channels = 1 if vae_levels == 1 else 4
    transformer = Flux2Transformer2DModel(
        patch_size=1, in_channels=4 * latent_channels, num_layers=layers,
        num_single_layers=layers, num_attention_heads=heads, attention_head_dim=16,
        joint_attention_dim=16, timestep_guidance_channels=256, axes_dims_rope=[4, 4, 4, 4],
        guidance_embeds=False,
    )  # fmt: skip
    text_encoder = Qwen3ForCausalLM(
        Qwen3Config(
            vocab_size=len(tok), hidden_size=16, intermediate_size=16, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=2, head_dim=8, max_position_embeddings=512,
        )
    )  # fmt: skip
    vae = AutoencoderKLFlux2(
        in_channels=3, out_channels=3, latent_channels=latent_channels,
        block_out_channels=(4,) * vae_levels, layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * vae_levels,
        up_block_types=("UpDecoderBlock2D",) * vae_levels, norm_num_groups=1,
        use_quant_conv=False, use_post_quant_conv=False, sample_size=32,
    )  # fmt: skip
    return Flux2KleinPipeline(
        transformer=transformer, text_encoder=text_encoder, tokenizer=tok, vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(),
    )  # fmt: skip


def tiny_qwen_edit_plus(root: Path) -> Any:
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImageEditPlusPipeline,
        QwenImageTransformer2DModel,
    )

    tok = qwen_tokenizer(root / "qwen-tok")
    ids = {s: tok.convert_tokens_to_ids(s) for s in QWEN_SPECIALS}
    torch.manual_seed(0)
    transformer = QwenImageTransformer2DModel(
        patch_size=2, in_channels=16, out_channels=4, num_layers=2, num_attention_heads=3,
        attention_head_dim=16, joint_attention_dim=16, axes_dims_rope=(8, 4, 4),
        guidance_embeds=False,
    )  # fmt: skip
    vae = AutoencoderKLQwenImage(
        base_dim=24, z_dim=4, dim_mult=[1, 2, 4], num_res_blocks=1,
        temperal_downsample=[False, True], latents_mean=[0.0] * 4, latents_std=[1.0] * 4,
    )  # fmt: skip
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tok), "hidden_size": 16, "intermediate_size": 16,
            "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 2,
            "rope_theta": 1e6,
            "rope_scaling": {"type": "default", "rope_type": "default", "mrope_section": [1, 1, 2]},
            "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
        },
        vision_config={
            "depth": 2, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2,
            "out_hidden_size": 16,
        },
        vocab_size=len(tok), hidden_size=16,
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
    )  # fmt: skip
    return QwenImageEditPlusPipeline(
        transformer=transformer, vae=vae, scheduler=FlowMatchEulerDiscreteScheduler(),
        text_encoder=Qwen2_5_VLForConditionalGeneration(config), tokenizer=tok,
        processor=None,  # saved by save_tiny_qwen; it cannot be built without torchvision
    )  # fmt: skip


def save_tiny_klein(root: Path, **sizes: int) -> Path:
    tiny_klein(root, **sizes).save_pretrained(root / "klein")
    return root / "klein"


def save_tiny_sd(root: Path) -> Path:
    tiny_sd_inpaint(root).save_pretrained(root / "sd")
    return root / "sd"


def save_tiny_qwen(root: Path) -> Path:
    """The pipeline plus a ``processor/`` folder as the real repositories have one (image
    processor settings and tokenizer files), which the engine's loader reads."""
    pipe = tiny_qwen_edit_plus(root)
    folder = root / "qwen"
    pipe.save_pretrained(folder)
    qwen_image_processor().save_pretrained(folder / "processor")
    pipe.tokenizer.save_pretrained(folder / "processor")
    return folder


def t5_tokenizer() -> Any:
    """A character-level Unigram T5 tokenizer (``engines.md`` §7.2)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [(chr(c), -1.0) for c in range(32, 127)] + [("\u2581", -1.0)]
    core = Tokenizer(models.Unigram(pieces, unk_id=2))
    core.pre_tokenizer = pre_tokenizers.Metaspace()
    core.decoder = decoders.Metaspace()
    core.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
        model_max_length=512,
    )  # fmt: skip


def tiny_kontext(root: Path) -> Any:
    """FLUX.1-Kontext at toy size: CLIP + T5 + a 1-channel VAE without downsampling."""
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        FluxKontextPipeline,
        FluxTransformer2DModel,
    )
    from transformers import T5Config, T5EncoderModel

    clip_tok, t5_tok = clip_tokenizer(root / "clip-tok"), t5_tokenizer()
    torch.manual_seed(0)
    t5 = T5EncoderModel(
        T5Config(
            vocab_size=len(t5_tok), d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
            decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
        )
    )  # fmt: skip
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=1, block_out_channels=(4,),
        layers_per_block=1, norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False,
        shift_factor=0.0609, scaling_factor=1.5035, sample_size=32,
    )  # fmt: skip
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, num_attention_heads=2,
        attention_head_dim=16, joint_attention_dim=32, pooled_projection_dim=32,
        axes_dims_rope=[4, 4, 8], guidance_embeds=True,
    )  # fmt: skip
    return FluxKontextPipeline(
        transformer=transformer, vae=vae, scheduler=FlowMatchEulerDiscreteScheduler(),
        text_encoder=tiny_clip_text(clip_tok, layers=2), tokenizer=clip_tok,
        text_encoder_2=t5, tokenizer_2=t5_tok,
    )  # fmt: skip


def save_tiny_kontext(root: Path) -> Path:
    tiny_kontext(root).save_pretrained(root / "kontext")
    return root / "kontext"


QWEN3_VL_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}"
    "{{ m['content'] }}{% else %}{% for c in m['content'] %}{% if c['type'] == 'text' %}"
    "{{ c['text'] }}{% else %}<|vision_start|><|image_pad|><|vision_end|>{% endif %}{% endfor %}"
    "{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% endif %}"
)
"""Qwen3-VL's template shape: message contents are lists of text / image parts (Qwen-Image-2.1
counts the system tokens it drops by rendering one)."""


def qwen3_vl_image_processor() -> Qwen2VLImageProcessor:
    # Qwen3-VL: 16-px patches merged 2x2, one merged token per 32x32 pixels; tiny limits.
    return Qwen2VLImageProcessor(
        patch_size=16, merge_size=2, temporal_patch_size=2, min_pixels=32 * 32, max_pixels=64 * 64
    )


def tiny_qwen3_vl(tok: Qwen2TokenizerFast) -> Any:
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    ids = {s: tok.convert_tokens_to_ids(s) for s in QWEN_SPECIALS}
    config = Qwen3VLConfig(
        text_config={
            "vocab_size": len(tok), "hidden_size": 16, "intermediate_size": 16,
            "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 2,
            "head_dim": 8,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [1, 1, 2]},
        },
        vision_config={
            "depth": 2, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2,
            "out_hidden_size": 16, "patch_size": 16, "spatial_merge_size": 2,
            "temporal_patch_size": 2, "num_position_embeddings": 64,
            "deepstack_visual_indexes": [0],  # the default (8, 16, 24) needs 25 vision layers
        },
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )  # fmt: skip
    return Qwen3VLForConditionalGeneration(config).eval()


def _save_processor(folder: Path, tok: Qwen2TokenizerFast, image_processor: Any) -> None:
    """A ``processor/``-style folder as the real repositories have one: image processor
    settings, tokenizer files and the chat template (the engine loader reads it)."""
    image_processor.save_pretrained(folder)
    tok.save_pretrained(folder)
    (folder / "chat_template.jinja").write_text(tok.chat_template or "")


def tiny_qwen21(root: Path) -> Any:
    """Qwen-Image-2.1 at toy size: the RGBA VAE with its real 16x downsampling (5 levels of
    width 4), z_dim 8 (not 4: the pipeline would take a 4-channel image for latents)."""
    from diffusers import (
        AutoencoderKLQwenImage21,
        FlowMatchEulerDiscreteScheduler,
        QwenImage21Pipeline,
        QwenImage21Transformer2DModel,
    )

    tok = qwen_tokenizer(root / "qwen-tok")
    tok.chat_template = QWEN3_VL_CHAT_TEMPLATE
    torch.manual_seed(0)
    transformer = QwenImage21Transformer2DModel(
        patch_size=1, in_channels=8, out_channels=8, num_layers=1, attention_head_dim=16,
        num_attention_heads=2, context_in_dim=16, mlp_ratio=2, axes_dims_rope=(4, 6, 6),
    )  # fmt: skip
    vae = AutoencoderKLQwenImage21(
        base_dim=4, decoder_base_dim=4, z_dim=8, dim_mult=[1, 1, 1, 1, 1], num_res_blocks=1,
        attn_scales=[], temperal_downsample=[False, True, True, True],
        latents_mean=[0.0] * 8, latents_std=[1.0] * 8,
    )  # fmt: skip
    processor = _image_only(
        "qwen3-vl", image_processor=qwen3_vl_image_processor(), tokenizer=tok,
        chat_template=tok.chat_template,
    )  # fmt: skip
    return QwenImage21Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=tiny_qwen3_vl(tok),
        processor=processor, transformer=transformer,
    )  # fmt: skip


def tiny_joyimage(root: Path) -> Any:
    """JoyImage-Edit at toy size: a 3-level Wan VAE (8x), z_dim 16, one transformer block."""
    from diffusers import (
        AutoencoderKLWan,
        FlowMatchEulerDiscreteScheduler,
        JoyImageEditPipeline,
        JoyImageEditTransformer3DModel,
    )

    tok = qwen_tokenizer(root / "qwen-tok")
    tok.chat_template = QWEN3_VL_CHAT_TEMPLATE
    torch.manual_seed(0)
    transformer = JoyImageEditTransformer3DModel(
        patch_size=[1, 2, 2], in_channels=16, hidden_size=32, num_attention_heads=2, text_dim=16,
        num_layers=1, rope_dim_list=[4, 6, 6], theta=256,
    )  # fmt: skip
    vae = AutoencoderKLWan(
        base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
        temperal_downsample=[False, True, True],
    )  # fmt: skip
    processor = _image_only(
        "qwen3-vl", image_processor=qwen3_vl_image_processor(), tokenizer=tok,
        chat_template=tok.chat_template,
    )  # fmt: skip
    return JoyImageEditPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=tiny_qwen3_vl(tok),
        tokenizer=tok, transformer=transformer, processor=processor,
    )  # fmt: skip


def tiny_longcat(root: Path) -> Any:
    """LongCat-Image-Edit at toy size: the tiny Qwen2.5-VL encoder of ``tiny_qwen_edit_plus``,
    a 2-level FLUX.1-style VAE with the 16 latent channels the pipeline hard-codes."""
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        LongCatImageEditPipeline,
        LongCatImageTransformer2DModel,
    )

    qwen = tiny_qwen_edit_plus(root)
    torch.manual_seed(0)
    transformer = LongCatImageTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=16, pooled_projection_dim=16,
        axes_dims_rope=[4, 6, 6],
    )  # fmt: skip
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(4, 4),
        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
        layers_per_block=1, norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False,
        shift_factor=0.0609, scaling_factor=1.5035, sample_size=32,
    )  # fmt: skip
    processor = _image_only("qwen2-vl", image_processor=qwen_image_processor(), tokenizer=qwen.tokenizer)
    return LongCatImageEditPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=qwen.text_encoder,
        tokenizer=qwen.tokenizer, text_processor=processor, transformer=transformer,
    )  # fmt: skip


def _image_only(kind: str, **parts: Any) -> Any:
    """A Qwen2-VL / Qwen3-VL processor without the video processor that transformers cannot
    build without torchvision (the unused part; the type check is skipped for it)."""
    from unittest import mock

    from transformers import Qwen2VLProcessor, Qwen3VLProcessor

    cls: Any = Qwen2VLProcessor if kind == "qwen2-vl" else Qwen3VLProcessor
    with mock.patch.object(cls, "check_argument_for_proper_class", return_value=None):
        return cls(video_processor=None, **parts)


def save_tiny_qwen21(root: Path) -> Path:
    pipe = tiny_qwen21(root)
    folder = root / "qwen21"
    tok, image_processor = pipe.processor.tokenizer, pipe.processor.image_processor
    pipe.register_modules(processor=None)  # no video processor: saved by hand below
    pipe.save_pretrained(folder)
    _save_processor(folder / "processor", tok, image_processor)
    return folder


def save_tiny_joyimage(root: Path) -> Path:
    pipe = tiny_joyimage(root)
    folder = root / "joyimage"
    image_processor = pipe.processor.image_processor
    pipe.register_modules(processor=None)
    pipe.save_pretrained(folder)
    _save_processor(folder / "processor", pipe.tokenizer, image_processor)
    return folder


def save_tiny_longcat(root: Path) -> Path:
    pipe = tiny_longcat(root)
    folder = root / "longcat"
    image_processor = pipe.text_processor.image_processor
    pipe.register_modules(text_processor=None)
    pipe.save_pretrained(folder)
    _save_processor(folder / "text_processor", pipe.tokenizer, image_processor)
    return folder
