"""Train the shapes-world demo model (sae_patches/demo_model.py) on this CPU, deterministically and resumably.

Stages, each resumable from its checkpoint in RUN_DIR (outside git; default <cache>/train/shapes-demo):

  vae      encoder + decoder jointly on shapes-world images (deterministic autoencoder: the posterior mean,
           noise injected into the latent, a small latent L2 penalty; ComfyUI encodes with the mean too)
  fold     per-channel latent mean/std folded into quant_conv / post_quant_conv, so that SD15's scale
           factor 0.18215 gives zero-mean unit-variance latents; then a pool of encoded training latents
  unet     the UNet on the latent pool, eps prediction on ComfyUI's SD1.x schedule, min-SNR-5 weighting,
           10% empty captions (CFG), EMA; the text encoder is frozen at its seeded initialisation (its 73
           caption embeddings are computed once, through ComfyUI's own tokenizer and CLIP encode)
  decoder  the decoder alone, on the frozen encoder's latents (runs beside `unet`: the latents are fixed)
  export   EMA UNet + text encoder + VAE as one fp16 .safetensors with the architecture in its metadata

  python -m tools.train_shapes STAGE [--steps N] [--threads T] [--run-dir DIR]

Every batch is a pure function of (stage, step): a resumed run computes what an uninterrupted one would.
Loss and wall time go to RUN_DIR/STAGE.jsonl, one line per logged step.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from tools.comfy_env import cache_dir, import_comfyui, load_pack_module  # noqa: E402

log = logging.getLogger("train_shapes")

TRAIN_SEED = 1  # shapes-world stream of the training images (evaluation uses other streams)
INIT_SEED = 20261201
EMPTY_CAPTION_RATE = 0.1
MIN_SNR_GAMMA = 5.0
LATENT_POOL = 32768  # encoded training images the UNet samples from (encoding runs ~100 images/s here)

DEFAULTS = {  # stage: (steps, batch, learning rate, warm-up steps)
    "vae": (1800, 8, 1e-3, 100),
    "unet": (20000, 64, 5e-4, 250),
    "decoder": (3000, 8, 5e-4, 50),
}
CHECKPOINT_EVERY_S = 120.0
LOG_EVERY = 25


def world():
    return load_pack_module("sae_math.shapes_world")


def demo():
    import_comfyui()
    return load_pack_module("sae_patches.demo_model")


# ---------------------------------------------------------------------------------------------- weights
def init_weights_(module: torch.nn.Module, seed: int, zero_prefixes: tuple[str, ...] = (),
                  embedding_std: float | None = None) -> None:
    """Seeded initialisation of every parameter (ComfyUI's ops skip it): matrices and kernels
    N(0, 1/fan_in), biases 0, norm scales 1; parameters whose name contains one of `zero_prefixes` start
    at zero (residual branches that start as identity train faster and stably)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(module.named_parameters()):
            if p.ndim >= 2:
                std = embedding_std if (embedding_std and "embedding" in name) else p[0].numel() ** -0.5
                value = torch.randn(p.shape, generator=gen) * std
            elif p.ndim == 0:
                value = torch.tensor(4.6052)  # CLIP logit_scale (unused by SD1.x)
            elif name.endswith("bias"):
                value = torch.zeros(p.shape)
            else:
                value = torch.ones(p.shape)
            if any(z in name for z in zero_prefixes):
                value = torch.zeros(p.shape)
            p.copy_(value)


UNET_ZERO = ("out.2.", "out_layers.3.", "proj_out.")


def build_vae_module(arch):
    from comfy.ldm.models.autoencoder import AutoencoderKL

    return AutoencoderKL(ddconfig=copy.deepcopy(arch["vae"]), embed_dim=4)


def images_tensor(seed: int, start: int, count: int, size: int):
    """Images start..start+count-1 of stream `seed` as float32 (count, 3, size, size) in [-1, 1]."""
    pixels, scenes = world().batch(seed, start, count, size)
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return x, scenes


def encode_mean(vae, x):
    return vae.quant_conv(vae.encoder(x))[:, :4]


def decode(vae, z):
    return vae.decoder(vae.post_quant_conv(z))


# ---------------------------------------------------------------------------------------------- loop
class Stage:
    """Resumable optimisation loop: parameters, AdamW, optional EMA, step counter, JSONL log."""

    def __init__(self, name: str, run_dir: Path, params, lr: float, warmup: int, keep_ema: bool = False):
        self.name, self.run_dir = name, run_dir
        self.params = [p for p in params if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=lr, betas=(0.9, 0.99), weight_decay=0.0)
        self.lr, self.warmup = lr, warmup
        self.ema = [p.detach().clone() for p in self.params] if keep_ema else None
        self.step = 0
        self.wall = 0.0
        self.path = run_dir / f"{name}.pt"
        self.log_path = run_dir / f"{name}.jsonl"
        self.modules: dict[str, torch.nn.Module] = {}

    def resume(self, **modules) -> None:
        self.modules = modules
        if not self.path.is_file():
            return
        state = torch.load(self.path, map_location="cpu", weights_only=False)
        for key, module in modules.items():
            module.load_state_dict(state["modules"][key])
        self.opt.load_state_dict(state["opt"])
        if self.ema is not None:
            for e, v in zip(self.ema, state["ema"]):
                e.copy_(v)
        self.step, self.wall = state["step"], state["wall"]
        log.info("%s: resumed at step %d (%.0f s trained)", self.name, self.step, self.wall)

    def save(self) -> None:
        state = {"modules": {k: m.state_dict() for k, m in self.modules.items()}, "opt": self.opt.state_dict(),
                 "ema": self.ema, "step": self.step, "wall": self.wall}
        tmp = self.path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.path)

    def update(self, loss: torch.Tensor, t_start: float) -> None:
        lr = self.lr * min(1.0, (self.step + 1) / self.warmup)
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        if self.ema is not None:
            decay = min(0.999, (1 + self.step) / (10 + self.step))
            with torch.no_grad():
                torch._foreach_lerp_(self.ema, [p.detach() for p in self.params], 1 - decay)
        self.step += 1
        self.wall += time.perf_counter() - t_start
        if self.step % LOG_EVERY == 0 or self.step == 1:
            with open(self.log_path, "a") as f:
                f.write(json.dumps({"step": self.step, "loss": float(loss.detach()), "grad_norm": float(grad_norm),
                                    "lr": lr, "wall_s": round(self.wall, 1)}) + "\n")

    def run(self, steps: int, batch_loss) -> None:
        """Train until `steps`; SIGTERM or SIGINT ends the run after the current step, checkpointed."""
        stop = []
        previous = {sig: signal.signal(sig, lambda *_: stop.append(True)) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            self._run(steps, batch_loss, stop)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _run(self, steps: int, batch_loss, stop: list) -> None:
        last_save = time.perf_counter()
        while self.step < steps and not stop:
            t0 = time.perf_counter()
            loss = batch_loss(self.step)
            self.update(loss, t0)
            if time.perf_counter() - last_save > CHECKPOINT_EVERY_S:
                self.save()
                last_save = time.perf_counter()
                log.info("%s: step %d loss %.4f (%.0f s)", self.name, self.step, float(loss), self.wall)
        self.save()



def ema_state_dict(module: torch.nn.Module, ema: list[torch.Tensor]) -> dict:
    """module's state dict with its trainable parameters replaced by `ema` (Stage's order: named_parameters)."""
    names = [n for n, p in module.named_parameters() if p.requires_grad]
    sd = dict(module.state_dict())
    sd.update({n: e.clone() for n, e in zip(names, ema)})
    return sd


# ---------------------------------------------------------------------------------------------- stages
def stage_vae(args, arch) -> None:
    steps, batch, lr, warmup = DEFAULTS["vae"]
    vae = build_vae_module(arch)
    init_weights_(vae, INIT_SEED + 2)
    size = arch["image_size"]
    st = Stage("vae", args.run_dir, vae.parameters(), lr, warmup)
    st.resume(vae=vae)

    def batch_loss(step):
        x, _ = images_tensor(TRAIN_SEED, step * batch, batch, size)
        z = encode_mean(vae, x)
        gen = torch.Generator().manual_seed(hash_seed("vae", step))
        noisy = z + 0.1 * z.detach().std() * torch.randn(z.shape, generator=gen)
        out = decode(vae, noisy)
        return F.mse_loss(out, x) + 0.5 * F.l1_loss(out, x) + 1e-4 * z.pow(2).mean()

    st.run(args.steps or steps, batch_loss)


def load_stage_module(run_dir: Path, stage: str, key: str, module: torch.nn.Module) -> torch.nn.Module:
    state = torch.load(run_dir / f"{stage}.pt", map_location="cpu", weights_only=False)
    module.load_state_dict(state["modules"][key])
    return module


def stage_fold(args, arch) -> None:
    """Fold latent statistics into the VAE and encode the UNet's latent pool."""
    size = arch["image_size"]
    vae = load_stage_module(args.run_dir, "vae", "vae", build_vae_module(arch)).eval()
    scale = demo().model_config(arch).latent_format.scale_factor
    with torch.no_grad():
        x, _ = images_tensor(TRAIN_SEED + 1000, 0, 4096, size)
        z = torch.cat([encode_mean(vae, x[i:i + 256]) for i in range(0, len(x), 256)])
        mean = z.mean(dim=(0, 2, 3))
        std = z.std(dim=(0, 2, 3))
        k = 1.0 / (std * scale)  # z_new = k (z_old - mean): then scale * z_new has unit variance
        q, p = vae.quant_conv, vae.post_quant_conv
        q.weight[:4] *= k.view(4, 1, 1, 1)
        q.bias[:4] = k * (q.bias[:4] - mean)
        q.bias[4:] += 2 * torch.log(k)  # the log-variance follows the same scaling (unused at inference)
        p.bias += (p.weight[:, :, 0, 0] @ mean)
        p.weight /= k.view(1, 4, 1, 1)
    log.info("fold: latent mean %s std %s", mean.tolist(), std.tolist())
    torch.save({"vae": vae.state_dict(), "mean": mean, "std": std}, args.run_dir / "vae_folded.pt")

    latents, captions = [], []
    index = {c: i for i, c in enumerate(world().all_captions())}
    t0 = time.perf_counter()
    with torch.no_grad():
        for start in range(0, args.pool, 512):
            x, scenes = images_tensor(TRAIN_SEED, 10_000_000 + start, min(512, args.pool - start), size)
            latents.append(scale * encode_mean(vae, x))
            captions += [index[(s.colour, s.shape, s.background)] for s in scenes]
    pool = torch.cat(latents)
    log.info("fold: %d latents in %.0f s, std %.3f mean %.3f", len(pool), time.perf_counter() - t0,
             float(pool.std()), float(pool.mean()))
    torch.save({"latents": pool.half(), "captions": torch.tensor(captions)}, args.run_dir / "latents.pt")


def hash_seed(stage: str, step: int) -> int:
    return (sum(map(ord, stage)) * 1_000_003 + step) % (2**63)


def build_text_encoder(arch):
    """The frozen text encoder (seeded) and the conditioning of every caption and of the empty one."""
    clip = demo().build_clip(arch, dtype=torch.float32)
    init_weights_(clip.cond_stage_model, INIT_SEED + 1, embedding_std=1.0)
    texts = [world().caption(*c) for c in world().all_captions()] + [""]
    with torch.no_grad():
        conds = torch.cat([clip.encode_from_tokens(clip.tokenize(t)) for t in texts])
    return clip, conds  # (73, 77, width): 72 captions in all_captions() order, then ""


def stage_unet(args, arch) -> None:
    steps, batch, lr, warmup = DEFAULTS["unet"]
    _, conds = build_text_encoder(arch)
    data = torch.load(args.run_dir / "latents.pt")
    pool, pool_captions = data["latents"].float(), data["captions"]
    base = demo().build_base_model(arch)
    unet = base.diffusion_model
    init_weights_(unet, INIT_SEED, UNET_ZERO)
    sigmas = base.model_sampling.sigmas.float()
    alphas_cumprod = 1.0 / (1.0 + sigmas**2)  # ComfyUI's discrete schedule: sigma^2 = (1 - a) / a
    st = Stage("unet", args.run_dir, unet.parameters(), lr, warmup, keep_ema=True)
    st.resume(unet=unet)
    empty = len(conds) - 1

    def batch_loss(step):
        epoch, offset = divmod(step * batch, len(pool))
        perm = torch.randperm(len(pool), generator=torch.Generator().manual_seed(hash_seed("epoch", epoch)))
        idx = perm[offset:offset + batch]
        gen = torch.Generator().manual_seed(hash_seed("unet", step))
        x0 = pool[idx]
        caption = pool_captions[idx].clone()
        caption[torch.rand(len(idx), generator=gen) < EMPTY_CAPTION_RATE] = empty
        t = torch.randint(0, len(sigmas), (len(idx),), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        a = alphas_cumprod[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        pred = unet(xt, timesteps=t.float(), context=conds[caption])
        snr = (a / (1 - a)).view(-1)
        weight = torch.clamp(snr, max=MIN_SNR_GAMMA) / snr
        return (weight * (pred - noise).pow(2).mean(dim=(1, 2, 3))).mean()

    st.run(args.steps or steps, batch_loss)


def stage_decoder(args, arch) -> None:
    steps, batch, lr, warmup = DEFAULTS["decoder"]
    vae = build_vae_module(arch)
    vae.load_state_dict(torch.load(args.run_dir / "vae_folded.pt")["vae"])
    for p in list(vae.encoder.parameters()) + list(vae.quant_conv.parameters()):
        p.requires_grad_(False)
    size = arch["image_size"]
    st = Stage("decoder", args.run_dir, vae.parameters(), lr, warmup)
    st.resume(vae=vae)

    def batch_loss(step):
        x, _ = images_tensor(TRAIN_SEED + 2000, step * batch, batch, size)
        with torch.no_grad():
            z = encode_mean(vae, x)
            gen = torch.Generator().manual_seed(hash_seed("decoder", step))
            # Sampled latents are never exact: train the decoder on slightly perturbed ones.
            z = z + 0.05 * z.std() * torch.randn(z.shape, generator=gen)
        out = decode(vae, z)
        return F.mse_loss(out, x) + 0.5 * F.l1_loss(out, x)

    st.run(args.steps or steps, batch_loss)


def stage_export(args, arch) -> None:
    import comfy.utils

    dm = demo()
    out = Path(args.out or dm.EMBEDDED_PATH)
    clip, _ = build_text_encoder(arch)
    base = dm.build_base_model(arch)
    unet_state = torch.load(args.run_dir / "unet.pt", map_location="cpu", weights_only=False)
    base.diffusion_model.load_state_dict(ema_state_dict(base.diffusion_model, unet_state["ema"]))
    vae = build_vae_module(arch)
    decoder_path = args.run_dir / "decoder.pt"
    if decoder_path.is_file():
        vae.load_state_dict(torch.load(decoder_path, weights_only=False)["modules"]["vae"])
    else:
        vae.load_state_dict(torch.load(args.run_dir / "vae_folded.pt")["vae"])
    sd = base.state_dict_for_saving(clip.get_sd(), vae.state_dict())
    sd = {k: v.detach().to(torch.float16).contiguous() for k, v in sd.items()}
    walls = {s: _stage_summary(args.run_dir, s) for s in ("vae", "unet", "decoder")}
    metadata = {
        dm.ARCHITECTURE_KEY: json.dumps(arch, sort_keys=True),
        "sae.data_version": world().DATA_VERSION,
        "sae.training_command": f"UNET_STEPS={unet_state['step']} scripts/train-shapes.sh "
                                "(python -m tools.train_shapes vae, fold, decoder beside unet, unet, export)",
        "sae.training": json.dumps(walls, sort_keys=True),
        "modelspec.title": "Self-Attention Edit shapes-world demo (SD1.x architecture)",
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    comfy.utils.save_torch_file(sd, str(out), metadata=metadata)
    log.info("export: %s (%.1f MB), sha256 %s", out, out.stat().st_size / 1e6, dm.sha256_of(out))


def _stage_summary(run_dir: Path, stage: str) -> dict:
    path = run_dir / f"{stage}.jsonl"
    if not path.is_file():
        return {}
    lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    last = lines[-1]
    return {"steps": last["step"], "wall_s": last["wall_s"],
            "final_loss_mean_last_200": float(np.mean([x["loss"] for x in lines[-8:]]))}


def stage_report(args, arch) -> None:
    """The loss curves of every stage: a PNG chart (log loss against step, median of 8 logged points) and
    a JSON summary (steps, wall seconds, loss at checkpoints), for docs/shapes-model.md."""
    from PIL import Image, ImageDraw

    curves = {}
    for stage in ("vae", "decoder", "unet"):
        path = args.run_dir / f"{stage}.jsonl"
        if path.is_file():
            lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
            by_step = {x["step"]: x for x in lines}  # a resumed run may log a step twice: keep the last
            curves[stage] = [by_step[k] for k in sorted(by_step)]
    summary = {}
    width, height, pad = 720, 300, 40
    img = Image.new("RGB", (width, height * len(curves)), "white")
    draw = ImageDraw.Draw(img)
    for row, (stage, points) in enumerate(curves.items()):
        steps = np.array([p["step"] for p in points], dtype=float)
        loss = np.array([p["loss"] for p in points])
        smooth = np.array([np.median(loss[max(0, i - 7):i + 1]) for i in range(len(loss))])
        summary[stage] = {"steps": int(steps[-1]), "wall_s": points[-1]["wall_s"],
                          "loss_smoothed_at": {str(int(steps[i])): round(float(smooth[i]), 5)
                                               for i in np.unique(np.linspace(0, len(steps) - 1, 9).astype(int))}}
        top = row * height
        lo, hi = np.log10(smooth.min()), np.log10(smooth.max())
        xy = [(pad + (w - steps[0]) / max(steps[-1] - steps[0], 1) * (width - 2 * pad),
               top + pad + (hi - np.log10(v)) / max(hi - lo, 1e-9) * (height - 2 * pad)) for w, v in zip(steps, smooth)]
        draw.rectangle([pad, top + pad, width - pad, top + height - pad], outline=(200, 200, 200))
        draw.line(xy, fill=(40, 80, 230), width=2)
        draw.text((pad, top + 10), f"{stage}: loss (log scale, {10**hi:.3g} to {10**lo:.3g}) over {int(steps[-1])} "
                  f"steps, {points[-1]['wall_s'] / 60:.0f} min", fill="black")
    out = Path(args.out or REPO / "docs" / "shapes-training-loss.png")
    img.save(out)
    (out.with_suffix(".json")).write_text(json.dumps(summary, indent=1) + "\n")
    log.info("report: %s", json.dumps(summary))


STAGES = {"vae": stage_vae, "fold": stage_fold, "unet": stage_unet, "decoder": stage_decoder,
          "export": stage_export, "report": stage_report}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stage", choices=list(STAGES))
    parser.add_argument("--steps", type=int, default=None, help="train until this step (default per stage)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 beside another job)")
    parser.add_argument("--run-dir", type=Path, default=cache_dir() / "train" / "shapes-demo")
    parser.add_argument("--pool", type=int, default=LATENT_POOL, help="fold: training latents to encode")
    parser.add_argument("--out", default=None, help="export: output file (default: the embedded model path)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(message)s")
    log.setLevel(logging.INFO)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    args.run_dir.mkdir(parents=True, exist_ok=True)
    arch = _architecture()
    STAGES[args.stage](args, arch)
    return 0


def _architecture() -> dict:
    return copy.deepcopy(demo().DEFAULT_ARCHITECTURE)


if __name__ == "__main__":
    sys.exit(main())
