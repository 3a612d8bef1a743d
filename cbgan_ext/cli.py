"""The ``cbgan-ext`` command (also ``python -m cbgan_ext.cli``).

Subcommands live in one table: to add one, write ``configure(parser)`` and ``run(args) -> int`` and decorate
run with ``@subcommand("name", help="...", configure=configure)``; ``main`` builds the parser from the table.
"""
import argparse
import json
import sys

_SUBCOMMANDS = {}  # name -> (help, configure, run), in registration order


def subcommand(name, help, configure):
    def register(run):
        if name in _SUBCOMMANDS:
            raise ValueError(f"cbgan-ext: subcommand {name!r} registered twice")
        _SUBCOMMANDS[name] = (help, configure, run)
        return run
    return register


def build_parser():
    parser = argparse.ArgumentParser(prog="cbgan-ext", description="GANs on long-tailed data (CBGAN, Softlabel-GAN, "
                                     "BAGAN) with fused CPU/CUDA ops.")
    subs = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_, configure, run) in _SUBCOMMANDS.items():
        p = subs.add_parser(name, help=help_, description=help_)
        configure(p)
        p.set_defaults(_run=run)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 2
    return args._run(args) or 0


# ------------------------------------------------------------------------------------------- shared arguments

def add_dataset_arguments(p, imbalance_default=1.0):
    from .data import PROFILES, list_datasets
    p.add_argument("--dataset", default="fashion-mnist", help=f"one of {', '.join(list_datasets())}")
    p.add_argument("--root", default=None, help="dataset directory (default: system files, then $CBGAN_EXT_DATA)")
    p.add_argument("--imbalance", type=float, default=imbalance_default, metavar="RHO",
                   help="imbalance ratio rho = largest/smallest class (>= 1)")
    p.add_argument("--profile", default="exp", choices=PROFILES, help="long-tail profile (default exp, as LDAM/CBGAN)")
    p.add_argument("--n-max", type=int, default=None, help="scale of the profile (default: smallest class; 5000 for "
                   "the Softlabel-GAN profiles)")
    p.add_argument("--image-size", type=int, default=None, help="pad/resize to this square size (fashion-mnist 32)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--download", action="store_true", help="let torchvision download the dataset (needs internet)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")


# ------------------------------------------------------------------------------------------- train-classifier

def _configure_train_classifier(p):
    from .nn.long_tail_losses import LOSSES
    from .train.classifier import AMP_DTYPES, AUGMENTS, LR_SCHEDULES
    add_dataset_arguments(p, imbalance_default=1.0)
    p.add_argument("--loss", default="ce", choices=LOSSES)
    p.add_argument("--out", required=True, help="checkpoint path (written atomically)")
    p.add_argument("--epochs", type=float, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=2e-4)
    p.add_argument("--width", type=float, default=1.0, help="channel multiplier of ResNet (1: 16/32/64)")
    p.add_argument("--depth", type=int, default=32, help="ResNet depth 6n+2 (32 = ResNet-32)")
    p.add_argument("--lr-schedule", default="step", choices=LR_SCHEDULES)
    p.add_argument("--warmup-epochs", type=float, default=None, help="default 5/200 of the epochs")
    p.add_argument("--drw-epoch", type=float, default=None, help="DRW start (default 0.8 x epochs)")
    p.add_argument("--augment", default="crop-flip", choices=AUGMENTS)
    p.add_argument("--amp", default="none", choices=tuple(AMP_DTYPES),
                   help="autocast dtype; bf16 is ~2.5x faster on AVX-512 CPUs")
    p.add_argument("--no-channels-last", action="store_true", help="keep NCHW (channels_last is faster on CPU)")
    p.add_argument("--eval-every", type=int, default=1, help="evaluate every N epochs (0: only at the end)")
    p.add_argument("--checkpoint-every", type=float, default=300.0, metavar="SECONDS",
                   help="also checkpoint within an epoch this often")
    p.add_argument("--max-minutes", type=float, default=None, help="stop (with a checkpoint) after this long")
    p.add_argument("--resume", action="store_true", help="continue the checkpoint at --out")
    p.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint at --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the final record as JSON on stdout")


@subcommand("train-classifier", help="train the ResNet classifier (CBGAN/Softlabel-GAN in-loop classifier or the "
            "annotator) on a long-tailed dataset", configure=_configure_train_classifier)
def _run_train_classifier(args):
    from .train.classifier import train_classifier
    result = train_classifier(
        args.out, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress, threads=args.threads,
        dataset=args.dataset, root=args.root, imbalance_ratio=args.imbalance, profile=args.profile,
        n_max=args.n_max, image_size=args.image_size, seed=args.seed, download=args.download, device=args.device,
        loss=args.loss, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, momentum=args.momentum,
        weight_decay=args.weight_decay, width=args.width, depth=args.depth, lr_schedule=args.lr_schedule,
        warmup_epochs=args.warmup_epochs, drw_epoch=args.drw_epoch, augment=args.augment,
        eval_every=args.eval_every, checkpoint_every_s=args.checkpoint_every, max_minutes=args.max_minutes,
        amp=args.amp, channels_last=not args.no_channels_last)
    summary = {k: result[k] for k in ("accuracy", "balanced_accuracy", "per_class_accuracy", "class_counts", "epoch",
                                      "train_time_s", "train_cpu_s", "finished")}
    if args.json:
        print(json.dumps(summary))
    elif result["balanced_accuracy"] is not None:
        print(f"{args.out}: balanced test accuracy {result['balanced_accuracy'] * 100:.2f}% "
              f"(overall {result['accuracy'] * 100:.2f}%) after {result['epoch']} epochs, "
              f"{result['train_time_s']:.0f}s of training ({result['train_cpu_s']:.0f}s CPU)")
    return 0


# ------------------------------------------------------------------------------------------- GAN: train, eval, sample

def _configure_train(p):
    add_dataset_arguments(p, imbalance_default=100.0)
    p.add_argument("--method", default="cbgan", choices=("gan", "cbgan"), help="cbgan, or the unregularised baseline")
    p.add_argument("--classifier", default=None, help="train-classifier checkpoint: the classifier in CBGAN's loop")
    p.add_argument("--annotator", default=None, help="train-classifier checkpoint on balanced data, for evaluation")
    p.add_argument("--out", required=True, help="run directory (resumes when it holds a checkpoint)")
    p.add_argument("--steps", type=int, default=100000, help="generator steps (paper: 100k)")
    p.add_argument("--arch", default="sndcgan", choices=("sndcgan", "snresgan"))
    p.add_argument("--width", type=float, default=1.0, help="channel multiplier (1 = the paper's networks)")
    p.add_argument("--z-dim", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--beta1", type=float, default=0.5)
    p.add_argument("--beta2", type=float, default=0.999)
    p.add_argument("--lam", type=float, default=None, help="regularizer weight λ (default: the paper's for --imbalance)")
    p.add_argument("--alpha", type=float, default=0.5, help="forgetting factor α of Eq. 5")
    p.add_argument("--beta", type=float, default=None, help="β of Eq. 5 (default 1; =alpha: convex combination)")
    p.add_argument("--cycle", type=int, default=2000, help="steps per cycle between updates of N̂ (paper: 2000)")
    p.add_argument("--weighting", default="paper", choices=("paper", "official"))
    p.add_argument("--ema-decay", type=float, default=0.9999)
    p.add_argument("--ema-start", type=int, default=20000)
    p.add_argument("--eval-every", type=int, default=2000)
    p.add_argument("--eval-samples", type=int, default=10000)
    p.add_argument("--sample-every", type=int, default=2000)
    p.add_argument("--ckpt-every", type=int, default=500)
    p.add_argument("--deterministic", action="store_true", help="torch.use_deterministic_algorithms (slower)")
    p.add_argument("--no-progress", action="store_true")


@subcommand("train", help="train an unconditional GAN (SNDCGAN/SNResGAN) with or without the CB regularizer",
            configure=_configure_train)
def _run_train(args):
    import torch
    from .data import get_dataset
    from .models.classifier import load_classifier
    from .train.gan import GANTrainer
    if args.threads:
        torch.set_num_threads(args.threads)
    data = get_dataset(args.dataset, "train", root=args.root, image_size=args.image_size,
                       imbalance_ratio=args.imbalance, profile=args.profile, n_max=args.n_max, seed=args.seed,
                       download=args.download)
    clf = load_classifier(args.classifier, map_location=args.device) if args.classifier else None
    ann = load_classifier(args.annotator, map_location=args.device) if args.annotator else None
    trainer = GANTrainer(data, args.out, method=args.method, steps=args.steps, arch=args.arch, width=args.width,
                         z_dim=args.z_dim, batch_size=args.batch_size, lr=args.lr, betas=(args.beta1, args.beta2),
                         classifier=clf, annotator=ann, lam=args.lam, alpha=args.alpha, beta=args.beta,
                         cycle=args.cycle, weighting=args.weighting, ema_decay=args.ema_decay,
                         ema_start=args.ema_start, eval_samples=args.eval_samples, device=args.device,
                         seed=args.seed, eval_every=args.eval_every if ann else 0, sample_every=args.sample_every,
                         ckpt_every=args.ckpt_every, progress=not args.no_progress,
                         deterministic=args.deterministic)
    trainer.config.update(classifier=args.classifier, annotator=args.annotator)
    best = trainer.run()
    if best:
        print(json.dumps({"best_step": best["step"], **{k: v for k, v in best["metrics"].items()}}))
    return 0


def _configure_eval(p):
    p.add_argument("--run", required=True, help="a `cbgan-ext train` run directory")
    p.add_argument("--checkpoint", default="best", choices=("best", "last"))
    p.add_argument("--annotator", default=None, help="classifier checkpoint (default: the run's annotator)")
    p.add_argument("--n", type=int, default=10000, help="generated samples")
    p.add_argument("--fid", default="auto", choices=("auto", "inception", "annotator"),
                   help="Fréchet distance features: clean-fid's Inception (standard FID; needs its weights), the "
                        "annotator's (FD-annotator), or Inception when its weights are present")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)


@subcommand("eval", help="KL to uniform of the annotator's class histogram and the Fréchet distance of a run",
            configure=_configure_eval)
def _run_eval(args):
    from .train.gan import evaluate_run
    res = evaluate_run(args.run, checkpoint=args.checkpoint, annotator=args.annotator, n=args.n, fid=args.fid,
                       device=args.device, seed=args.seed)
    print(json.dumps(res))
    return 0


def _configure_sample(p):
    p.add_argument("--run", required=True, help="a `cbgan-ext train` run directory")
    p.add_argument("--checkpoint", default="best", choices=("best", "last"))
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--out", default=None, help=".png (a grid) or .pt (a tensor in [-1, 1]); default RUN/samples.png")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")


@subcommand("sample", help="generate images from a trained run (EMA generator)", configure=_configure_sample)
def _run_sample(args):
    import os
    import torch
    import torchvision
    from .train.gan import load_generator
    G, z_dim = load_generator(args.run, args.checkpoint, device=args.device)
    with torch.no_grad():
        z = torch.randn(args.n, z_dim, generator=torch.Generator().manual_seed(args.seed)).to(args.device)
        x = G(z).cpu()
    out = args.out or os.path.join(args.run, "samples.png")
    if out.endswith(".pt"):
        torch.save(x, out)
    else:
        torchvision.utils.save_image(x, out, nrow=int(args.n ** 0.5) or 1, normalize=True, value_range=(-1, 1))
    print(out)
    return 0


# ------------------------------------------------------------------------------------------- the main job

def _configure_demo(p):
    p.add_argument("--out", default="runs/demo", help="output directory (the run resumes when it exists)")
    p.add_argument("--steps", type=int, default=None, help="GAN steps per method (default: see pipeline.DEFAULTS)")
    p.add_argument("--classifier-epochs", type=int, default=None)
    p.add_argument("--annotator-epochs", type=int, default=None)
    p.add_argument("--gan-width", type=float, default=None)
    p.add_argument("--final-samples", type=int, default=None)
    p.add_argument("--weighting", default=None, choices=("paper", "official"), help="CB weighting (default official)")
    p.add_argument("--lam", type=float, default=None, help="CB λ (default: the paper's for ρ=100, 10)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)


@subcommand("demo", help="the main job: classifier, annotator, SNDCGAN baseline and CBGAN on long-tailed "
            "Fashion-MNIST (rho=100), then a report", configure=_configure_demo)
def _run_demo(args):
    from .pipeline import run
    run(args.out, steps=args.steps, seed=args.seed, threads=args.threads, classifier_epochs=args.classifier_epochs,
        annotator_epochs=args.annotator_epochs, gan_width=args.gan_width, final_samples=args.final_samples,
        weighting=args.weighting, lam=args.lam)
    return 0


if __name__ == "__main__":
    # Dispatch through the importable module so subcommands registered elsewhere land in one table.
    from cbgan_ext.cli import main as _main
    sys.exit(_main())
