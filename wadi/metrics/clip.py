"""CLIP score through torchmetrics' CLIPScore, from a LOCAL CLIP directory, reported as the papers do.

torchmetrics gives 100 * cos(image embedding, caption embedding), averaged and clipped at 0; GigaGAN / DMD2 /
WaDi tables print the cosine itself (e.g. 0.31), so `clip_score` = torchmetrics' value / 100.
Choices, stated because they move the number:
  - the model: ViT-L/14 (HF `openai/clip-vit-large-patch14`) unless `eval.clip_path` points elsewhere;
  - the image CLIP sees: the protocol's 256 x 256 crop (wadi.metrics.protocol), then CLIP's own processor with
    its PIL backend (bicubic resize of the short side to 224 + center crop, as OpenAI's `preprocess`);
  - the caption as is (no "A photo depicts" prefix, which GigaGAN's script adds), truncated at 77 tokens
    by torchmetrics.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from wadi.metrics.features import missing_weights_error

CLIP_HF_ID = "openai/clip-vit-large-patch14"


class _TensorFeatures(nn.Module):
    """A CLIPModel whose get_{image,text}_features return tensors.

    transformers 5 returns a ModelOutput (projected embedding in `pooler_output`); torchmetrics 1.9 expects
    the tensor transformers 4 returned.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.config = model.config

    @staticmethod
    def _tensor(out) -> Tensor:
        return out if isinstance(out, Tensor) else out.pooler_output

    def get_image_features(self, *args, **kwargs) -> Tensor:
        return self._tensor(self.model.get_image_features(*args, **kwargs))

    def get_text_features(self, *args, **kwargs) -> Tensor:
        return self._tensor(self.model.get_text_features(*args, **kwargs))


def resolve_clip_path(path: str | Path, allow_download: bool = False, hf_id: str = CLIP_HF_ID) -> Path:
    """The local CLIP directory; with allow_download, fetch `hf_id` from the Hub and save it there first."""
    path = Path(str(path)).expanduser()
    if (path / "config.json").is_file():
        return path
    if allow_download:
        from transformers import CLIPModel, CLIPProcessor

        CLIPModel.from_pretrained(hf_id).save_pretrained(path)
        CLIPProcessor.from_pretrained(hf_id).save_pretrained(path)
        return path
    raise missing_weights_error(
        path,
        f"CLIP model directory for CLIP score (config.json + weights + tokenizer/processor files; default {hf_id})",
        f"huggingface-cli download {hf_id} --local-dir {path}  (the Hugging Face model id is {hf_id})",
        "eval.clip_path",
    )


def _load_local(path: Path):
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(path, local_files_only=True).eval()
    processor = CLIPProcessor.from_pretrained(path, local_files_only=True, backend="pil")
    return _TensorFeatures(model), processor


class ClipScorer:
    """Per-image CLIP cosine similarities with torchmetrics' CLIPScore machinery (model from a local dir)."""

    def __init__(
        self,
        path: str | Path,
        device: str | torch.device = "cpu",
        batch_size: int = 64,
        allow_download: bool = False,
        hf_id: str = CLIP_HF_ID,
    ) -> None:
        from torchmetrics.multimodal import CLIPScore

        self.path = resolve_clip_path(path, allow_download, hf_id)
        self.metric = CLIPScore(model_name_or_path=lambda: _load_local(self.path))
        self.device = torch.device(device)
        self.batch_size = batch_size

    def to(self, device: str | torch.device) -> ClipScorer:
        self.device = torch.device(device)
        return self

    @torch.no_grad()
    def __call__(self, images: Tensor, captions: Sequence[str]) -> Tensor:
        """(N, 3, H, W) uint8 images + N captions -> (N,) float32 cosine similarities on CPU.

        One score per image (images are scored on different ranks and averaged after gathering), which
        torchmetrics' public API does not return (CLIPScore accumulates a sum; `clip_score` returns the clipped
        mean). So the cosines are computed here with transformers' public API on the model and processor that
        CLIPScore loaded, with CLIPScore's inputs (its processor call, captions cut at the text model's
        positions); tests/metrics/test_clip.py checks each one against CLIPScore.update on that image alone.
        """
        if images.shape[0] != len(captions):
            raise ValueError(f"CLIP score: {images.shape[0]} images but {len(captions)} captions")
        out = []
        for i in range(0, len(captions), self.batch_size):
            batch = images[i : i + self.batch_size]
            img = self._image_features(batch)
            txt = self._text_features(list(captions[i : i + self.batch_size]))
            img = img / img.norm(p=2, dim=-1, keepdim=True)
            txt = txt / txt.norm(p=2, dim=-1, keepdim=True)
            out.append((100 * (img * txt).sum(dim=-1)).float().cpu() / 100)
        return torch.cat(out) if out else torch.zeros(0)

    def _model(self):
        return self.metric.model.to(self.device)

    def _image_features(self, images: Tensor) -> Tensor:
        pixels = self.metric.processor(images=[im.cpu() for im in images], return_tensors="pt", padding=True)
        return self._model().get_image_features(pixels["pixel_values"].to(self.device))

    def _text_features(self, captions: list[str]) -> Tensor:
        tokens = self.metric.processor(text=captions, return_tensors="pt", padding=True)
        ids, mask = tokens["input_ids"], tokens["attention_mask"]
        limit = getattr(
            getattr(self.metric.model.config, "text_config", None), "max_position_embeddings", None
        )
        if limit is not None and ids.shape[-1] > limit:  # as CLIPScore: keep the first `limit` tokens
            ids, mask = ids[..., :limit], mask[..., :limit]
        return self._model().get_text_features(ids.to(self.device), mask.to(self.device))


def clip_score(per_image: Tensor) -> float:
    """The reported CLIP score: mean cosine, clipped at 0 (CLIPScore.compute / 100)."""
    return float(torch.clamp(per_image.double().mean(), min=0))


def save_tiny_clip(path: str | Path, seed: int = 0, image_size: int = 32) -> Path:
    """A tiny random CLIPModel + processor (character-level tokenizer) saved like a Hub CLIP directory.

    For tests and offline smoke runs: the scores mean nothing, the files and APIs are the real ones.
    """
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    path = Path(path)
    chars = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)]
    vocab = {t: i for i, t in enumerate(chars + [c + "</w>" for c in chars])}
    bos, eos = len(vocab), len(vocab) + 1
    vocab |= {"<|startoftext|>": bos, "<|endoftext|>": eos}
    text = {"vocab_size": len(vocab), "bos_token_id": bos, "eos_token_id": eos, "pad_token_id": eos}
    size = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4}
    config = CLIPConfig(
        text_config={**size, **text, "max_position_embeddings": 77},
        vision_config={**size, "image_size": image_size, "patch_size": 8},
        projection_dim=16,
    )
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(path)
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
        ),
        tokenizer=CLIPTokenizer(vocab=vocab, merges=[]),
    )
    processor.save_pretrained(path)
    return path
