"""The ``cbgan-ext`` command (also ``python -m cbgan_ext.cli``).

Subcommands live in one table: to add one, write ``configure(parser)`` and ``run(args) -> int`` and decorate
run with ``@subcommand("name", help="...", configure=configure)``; ``main`` builds the parser from the table.

User errors (a bad argument, a missing or corrupt file, a run of other settings) are printed as one line
and exit non-zero (2 for arguments checked before any work); ``--debug`` or CBGAN_EXT_DEBUG=1 shows the
traceback instead.
"""
import argparse
import json
import math
import os
import sys
import textwrap

from .train.options import float_check, int_check

_SUBCOMMANDS = {}  # name -> (help, configure, run), in registration order


def subcommand(name, help, configure):
    def register(run):
        if name in _SUBCOMMANDS:
            raise ValueError(f"cbgan-ext: subcommand {name!r} registered twice")
        _SUBCOMMANDS[name] = (help, configure, run)
        return run
    return register


class UsageError(ValueError):
    """A command-line value that fails its check: exit status 2, before any work."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not the whole usage block
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _method_titles():
    from .train.methods import get_method, method_names
    return [(n, get_method(n).title) for n in method_names()]


def build_parser():
    methods = ", ".join(n for n, _ in _method_titles())
    about = textwrap.fill(f"GANs on long-tailed data with fused CPU/CUDA ops. Methods: {methods} (`cbgan-ext "
                          "methods` lists them).", 79, break_on_hyphens=False)  # method names stay whole
    parser = _Parser(prog="cbgan-ext", description=about, formatter_class=argparse.RawDescriptionHelpFormatter)
    from . import __version__
    parser.add_argument("--version", action="version", version=f"cbgan-ext {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors (or CBGAN_EXT_DEBUG=1)")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="load files that only the full unpickler reads (older cbgan_ext files): that can run "
                             "code, so only for files you trust (or CBGAN_EXT_TRUST_PICKLE=1)")
    subs = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (help_, configure, run) in _SUBCOMMANDS.items():
        p = subs.add_parser(name, help=help_, description=help_)
        configure(p)
        p.set_defaults(_run=run)
    return parser


_CONFIG_HELP = ("JSON (or YAML) file of flag names to values, read as defaults: flags on the line win (configs/ has "
                "the papers' settings)")


CONFIG_COMMANDS = ("train", "train-classifier", "demo")  # the commands that take --config FILE


def main(argv=None):
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("CBGAN_EXT_DEBUG", "") not in ("", "0")
    trust = "--trust-pickle" in argv
    argv = [a for a in argv if a not in ("--debug", "--trust-pickle")]  # accepted anywhere on the line
    try:
        _apply_config_file(parser, argv)
    except UsageError as e:
        command = next((a for a in argv if a in _SUBCOMMANDS), "")
        print(f"cbgan-ext {command}: error: {e}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 2
    from .train import checkpoint
    previous = checkpoint.trust_pickle(True) if trust else None
    try:
        return args._run(args) or 0
    except KeyboardInterrupt:
        print(f"cbgan-ext {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a user error: one line; --debug for the traceback
        if debug:
            raise
        msg = " ".join(str(e).split()) or type(e).__name__
        kind = "" if isinstance(e, (ValueError, OSError, RuntimeError)) else f"{type(e).__name__}: "
        print(f"cbgan-ext {args.command}: error: {kind}{msg}", file=sys.stderr)
        return 2 if isinstance(e, UsageError) else 1
    finally:
        if previous is not None:
            checkpoint.trust_pickle(previous)


def _config_value(argv, command):
    """The value of --config on the line as argparse reads it (``--config=F``, an abbreviation, the last one)."""
    pre = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    pre.add_argument("--config")
    try:
        known, _ = pre.parse_known_args(argv[argv.index(command) + 1:] if command else argv)
    except argparse.ArgumentError as e:
        raise UsageError(f"--config: {e.message}") from None
    return known.config


def load_config_file(path):
    """A --config file: JSON, or YAML (.yaml/.yml, needs PyYAML), holding one object of flag names to values."""
    if not os.path.isfile(path):
        raise UsageError(f"--config: no file {path}")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"--config {path}: cannot be read as text ({type(e).__name__})") from None
    if path.endswith((".yaml", ".yml")):
        try:
            import yaml
        except ImportError:
            raise UsageError(f"--config {path}: YAML needs PyYAML (pip install pyyaml); or give the file as JSON") \
                from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise UsageError(f"--config {path}: not valid YAML ({' '.join(str(e).split())})") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise UsageError(f"--config {path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise UsageError(f"--config {path}: expected an object of flag names to values, got {type(data).__name__}")
    return data


def run_config_to_flags(c):
    """A training run's own config.json as `train` flags: its dataset, the settings its method reads, its files."""
    from .train.methods import get_method, method_names
    from .train.options import OPTIONS, TERM_SETTINGS, unused_options
    if c.get("method") not in method_names():
        raise UsageError(f"--config: the run's method {c.get('method')!r} is not one of {', '.join(method_names())}")
    ds = c["dataset"]
    # what no flag sets must be what the flags give, or the run would not come back as it was
    if ds.get("seed") not in (None, c.get("seed")) or ds.get("channels") is not None or \
            ds.get("resize_mode", "auto") != "auto":
        raise UsageError("--config: this run's dataset (its own seed, channels or resize mode) cannot be given "
                         "by train's flags; build it in Python (GANTrainer) instead")
    out = {"method": c["method"], "dataset": ds.get("name"), "root": ds.get("root"),
           "imbalance": ds.get("imbalance_ratio"), "profile": ds.get("profile"), "image_size": ds.get("image_size"),
           "n_max": ds.get("n_max"), "selection": ds.get("selection"), "minority_class": ds.get("minority_class"),
           "drop_fraction": ds.get("drop_fraction"), "seed": c.get("seed")}
    settings = {k: c[k] for k in OPTIONS if k in c and c[k] is not None and k != "seed"}
    unused = set(unused_options(get_method(c["method"]), settings, bool(c.get("cb_reg"))))
    for main, subs in TERM_SETTINGS.items():
        if not settings.get(main):  # the run recorded their defaults; they are flags only with the term on
            unused.update(subs)
    out.update({k: v for k, v in settings.items() if k not in unused})
    for key in ("classifier", "annotator", "soft_labels"):
        out[key] = c.get(key)
    return {k: v for k, v in out.items() if v is not None}


def _apply_config_file(parser, argv):
    """--config FILE: its values become the command's defaults, so flags on the line still win. Keys are flag
    names (dashes or underscores); one the command lacks, or a value it refuses, is an error naming it. `train`
    also takes a run's own config.json (what a run writes) and reads its settings back."""
    command = next((a for a in argv if a in _SUBCOMMANDS), None)
    path = _config_value(argv, command)
    if path is None:
        return
    if command not in CONFIG_COMMANDS:
        raise UsageError(f"--config: only for {', '.join(CONFIG_COMMANDS)}")
    data = load_config_file(path)
    if command == "train" and isinstance(data.get("dataset"), dict):
        data = run_config_to_flags(data)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    actions = {a.dest: a for a in sub._actions if a.dest not in ("help", "config")}
    defaults, unknown = {}, []
    for key, value in data.items():
        dest = str(key).lstrip("-").replace("-", "_")
        a = actions.get(dest)
        if a is None or dest.startswith("_"):
            unknown.append(key)
            continue
        if dest in defaults:
            raise UsageError(f"--config {path}: {_flag(dest)} is given twice")
        if isinstance(value, list):
            value = ",".join(str(v) for v in value)
        if isinstance(a, (argparse._StoreTrueAction, argparse.BooleanOptionalAction)):
            if not isinstance(value, bool):
                raise UsageError(f"--config {path}: {_flag(dest)} expects true or false, got {value!r}")
        elif value is not None:
            if a.type is int and isinstance(value, float) and not value.is_integer():
                raise UsageError(f"--config {path}: {_flag(dest)}: expected int, got {value!r}")
            try:
                value = (a.type or str)(value) if not isinstance(value, bool) else value
            except (TypeError, ValueError):
                raise UsageError(f"--config {path}: {_flag(dest)}: expected {getattr(a.type, '__name__', 'a string')}"
                                 f", got {value!r}") from None
            if a.choices is not None and value not in a.choices:
                raise UsageError(f"--config {path}: {_flag(dest)}: expected one of "
                                 f"{', '.join(map(str, a.choices))}, got {value!r}")
        defaults[dest] = value
        if value is not None:
            a.required = False  # given by the file
    if unknown:
        raise UsageError(f"--config {path}: {command} has no flags {', '.join(map(repr, unknown))}")
    sub.set_defaults(**defaults)


def check_args(args, **rules):
    """Check arguments before any work with the settings table's checks (``int_check``/``float_check`` of
    ``cbgan_ext.train.options``): rules name -> check. None values (flag not given) are skipped."""
    for name, check in rules.items():
        v = getattr(args, name)
        what = None if v is None else check(v)
        if what:
            raise UsageError(f"{_flag(name)}: expected {what}, got {v!r}")


def _check_minority(args):
    """--minority-class: class indices; checked against the dataset's K when it is loaded."""
    parts = [p.strip() for p in str(args.minority_class).split(",")]
    if not parts or not all(p.isdigit() for p in parts):
        raise UsageError(f"--minority-class: expected class indices like 3 or 3,5, got {args.minority_class!r}")
    if args.profile != "bagan" and (args.drop_fraction is not None or args.minority_class != "0"):
        raise UsageError("--minority-class/--drop-fraction: only with --profile bagan")
    args.minority_class = int(parts[0]) if len(parts) == 1 else [int(p) for p in parts]


def check_device(name):
    """--device: a torch device this machine has, checked before any work."""
    import torch
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device: expected cpu, cuda or cuda:N, got {name!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {name}: no CUDA device is visible here (torch.cuda.is_available() is False)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu" or device.index is not None:  # torch cannot load what it saves from "cpu:0"
        raise UsageError(f"--device: expected cpu, cuda or cuda:N, got {name!r}")
    return name


def _check_dataset_args(args):
    """The dataset flags that can be checked without loading the data."""
    from .data import list_datasets
    from .data.sources import NUM_CLASSES
    if args.dataset not in list_datasets():
        raise UsageError(f"--dataset: expected one of {', '.join(list_datasets())}, got {args.dataset!r}")
    check_device(args.device)
    k = NUM_CLASSES.get(args.dataset)
    wanted = args.minority_class if isinstance(args.minority_class, list) else [args.minority_class]
    if k is not None and args.profile == "bagan" and any(c >= k for c in wanted):
        raise UsageError(f"--minority-class: {args.dataset} has classes 0..{k - 1}, got {args.minority_class}")
    _check_subset_fits(args)


def _check_subset_fits(args):
    """The long-tailed subset the flags ask for fits the training split (known for the public datasets)."""
    from .data.long_tailed import subset_counts
    from .data.sources import SPLIT_COUNTS
    if args.n_max is not None and args.n_max < 1:
        raise UsageError(f"--n-max: expected a positive integer, got {args.n_max}")
    have = SPLIT_COUNTS.get((args.dataset, "train"))
    if have is None:
        return
    try:
        asked = subset_counts(have, args.imbalance, args.profile, args.n_max, seed=args.seed,
                              minority_class=args.minority_class, drop_fraction=args.drop_fraction)
    except ValueError as e:
        raise UsageError(f"--n-max/--imbalance/--profile: {e}") from None
    over = [] if asked is None else [c for c, (n, m) in enumerate(zip(asked, have)) if n > m]
    if over:
        scale = "its default n_max" if args.n_max is None else f"n_max {args.n_max}"
        raise UsageError(f"--n-max: the {args.profile!r} profile at {scale} asks for {list(asked)} images a "
                         f"class, more than {args.dataset}'s training split holds for classes {over} "
                         f"({[have[c] for c in over]}); expected a smaller --n-max")


def _check_writable(flag, path, create=False):
    """The folder ``path`` will be written into exists (or, with ``create``, can be made) and is writable,
    checked before any work."""
    folder = os.path.dirname(os.path.abspath(path))
    while create and not os.path.exists(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        raise UsageError(f"{flag}: folder {folder} " + ("is a file" if os.path.exists(folder) else "does not exist"))
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"{flag}: folder {folder} is not writable")


def _flag(key):
    return "--" + key.replace("_", "-")


# ------------------------------------------------------------------------------------------- shared arguments

def add_dataset_arguments(p, imbalance_default=1.0):
    from .data import PROFILES, list_datasets
    from .data.long_tailed import SELECTIONS
    p.add_argument("--dataset", default="fashion-mnist", help=f"one of {', '.join(list_datasets())}")
    p.add_argument("--root", default=None, help="dataset directory (default: system files, then $CBGAN_EXT_DATA)")
    p.add_argument("--imbalance", type=float, default=imbalance_default, metavar="RHO",
                   help="imbalance ratio rho = largest/smallest class (>= 1)")
    p.add_argument("--profile", default="exp", choices=PROFILES, help="long-tail profile (default exp, as LDAM/CBGAN)")
    p.add_argument("--selection", default="shuffle", choices=SELECTIONS,
                   help="which images a class keeps: a seeded shuffle (LDAM's) or the first in dataset order "
                        "(the Softlabel-GAN code's)")
    p.add_argument("--n-max", type=int, default=None, help="scale of the profile (default: smallest class; 5000 for "
                   "the Softlabel-GAN profiles)")
    p.add_argument("--image-size", type=int, default=None, help="pad/resize to this square size (fashion-mnist 32)")
    p.add_argument("--minority-class", default="0", metavar="K[,K...]",
                   help="profile bagan: the class(es) that lose images (default 0)")
    p.add_argument("--drop-fraction", type=float, default=None,
                   help="profile bagan: the fraction of each minority class dropped, in [0, 1) (default: keep "
                        "n_max/rho)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--download", default=False, action=argparse.BooleanOptionalAction,
                   help="let torchvision download the dataset (needs internet)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")


# ------------------------------------------------------------------------------------------- train-classifier

def _configure_train_classifier(p):
    from .nn.long_tail_losses import LOSSES
    from .train.classifier import AMP_DTYPES, AUGMENTS, LR_SCHEDULES
    p.add_argument("--config", metavar="FILE", help=_CONFIG_HELP)
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
    p.add_argument("--amp", default="none", choices=tuple(AMP_DTYPES) + ("auto",),
                   help="autocast dtype; bf16 is ~2.5x faster on CPUs with AVX-512 BF16/AMX and ~10x slower on "
                        "AVX2-only ones; auto: bf16 where the CPU (or a GPU) supports it")
    p.add_argument("--no-channels-last", action="store_true", help="keep NCHW (channels_last is faster on CPU)")
    p.add_argument("--eval-every", type=int, default=1, help="evaluate every N epochs (0: only at the end)")
    p.add_argument("--checkpoint-every", type=float, default=300.0, metavar="SECONDS",
                   help="also checkpoint within an epoch this often")
    p.add_argument("--max-minutes", type=float, default=None, help="stop (with a checkpoint) after this long")
    p.add_argument("--extra", default=None, metavar="FILE",
                   help="add these images to the training set: a torch file of uint8 images [M, C, H, W] and labels "
                        "[M] (what augment-eval writes; its digest is recorded)")
    p.add_argument("--resume", action="store_true", help="continue the checkpoint at --out")
    p.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint at --out")
    p.add_argument("--deterministic", action="store_true", help="torch.use_deterministic_algorithms (slower; on "
                   "GPUs needed for a resumed run to equal an uninterrupted one)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the final record as JSON on stdout")


@subcommand("train-classifier", help="train the ResNet classifier (CBGAN/Softlabel-GAN in-loop classifier or the "
            "annotator) on a long-tailed dataset", configure=_configure_train_classifier)
def _run_train_classifier(args):
    from .train import distributed as dist
    positive = float_check(0, lo_open=True)
    check_args(args, epochs=positive, batch_size=int_check(1), lr=positive, momentum=float_check(0),
               weight_decay=float_check(0), width=positive, imbalance=float_check(1), seed=int_check(0),
               eval_every=int_check(0), checkpoint_every=float_check(0), max_minutes=positive,
               warmup_epochs=float_check(0), drw_epoch=float_check(0), threads=int_check(1),
               drop_fraction=float_check(0, 1, hi_open=True))
    _check_minority(args)
    _check_dataset_args(args)
    if (args.depth - 2) % 6 != 0 or args.depth < 8:
        raise UsageError(f"--depth: expected 6n+2 with n >= 1 (8, 20, 32, 44, 56, 110), got {args.depth}")
    _check_writable("--out", args.out, create=True)
    args.extra = _existing_file("extra", args.extra)
    if args.resume and not os.path.exists(args.out):
        raise UsageError(f"--resume: nothing to resume, {args.out} does not exist")
    from .train.classifier import drw_problem
    if args.drw_epoch is not None and drw_problem(args.loss, args.drw_epoch, args.epochs):
        raise UsageError(f"--drw-epoch: {drw_problem(args.loss, args.drw_epoch, args.epochs)}")
    device = dist.setup(args.device)  # under torchrun: the process group, this rank's device
    main_rank = dist.is_main()
    try:
        if args.download and dist.active():  # one download per node, before the ranks read the files
            from .data import get_dataset
            dist.local_main_first(lambda: [get_dataset(args.dataset, split, root=args.root, download=True)
                                           for split in ("train", "test")])
        result = _train_classifier_with(args, device)
    finally:
        dist.shutdown()
    if not main_rank:
        return 0
    summary = {k: result[k] for k in ("accuracy", "balanced_accuracy", "per_class_accuracy", "class_counts", "epoch",
                                      "train_time_s", "train_cpu_s", "finished")}
    if args.json:
        print(json.dumps(summary))
    elif result["balanced_accuracy"] is not None:
        print(f"{args.out}: balanced test accuracy {result['balanced_accuracy'] * 100:.2f}% "
              f"(overall {result['accuracy'] * 100:.2f}%) after {result['epoch']} epochs, "
              f"{result['train_time_s']:.0f}s of training ({result['train_cpu_s']:.0f}s CPU)")
    return 0


def _train_classifier_with(args, device):
    from .train.classifier import train_classifier
    # a torchrun restart (--max-restarts) continues the checkpoint an earlier attempt of the same job wrote
    ours = False
    run_id = os.environ.get("TORCHELASTIC_RUN_ID")
    if int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0 and run_id and os.path.exists(args.out):
        from .train import checkpoint as ckpt
        ours = ckpt.load(args.out).get("torchelastic_run_id") == run_id
    return train_classifier(
        args.out, resume=args.resume or ours, overwrite=args.overwrite and not ours,
        progress=not args.no_progress, threads=args.threads, deterministic=args.deterministic,
        dataset=args.dataset, root=args.root, imbalance_ratio=args.imbalance, profile=args.profile,
        selection=args.selection, n_max=args.n_max, image_size=args.image_size, seed=args.seed,
        minority_class=args.minority_class, drop_fraction=args.drop_fraction, extra=args.extra,
        download=args.download, device=str(device), loss=args.loss, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, momentum=args.momentum,
        weight_decay=args.weight_decay, width=args.width, depth=args.depth, lr_schedule=args.lr_schedule,
        warmup_epochs=args.warmup_epochs, drw_epoch=args.drw_epoch, augment=args.augment,
        eval_every=args.eval_every, checkpoint_every_s=args.checkpoint_every, max_minutes=args.max_minutes,
        amp=args.amp, channels_last=not args.no_channels_last)


# ------------------------------------------------------------------------------------------- GAN: train, eval, sample

def _configure_train(p):
    from .train.methods import method_names
    from .train.options import OPTIONS
    p.add_argument("--config", metavar="FILE", help=_CONFIG_HELP + "; also a run's own config.json")
    add_dataset_arguments(p, imbalance_default=100.0)
    p.add_argument("--method", default="cbgan", choices=method_names(),
                   help="; ".join(f"{n}: {t}" for n, t in _method_titles()))
    p.add_argument("--classifier", default=None, help="train-classifier checkpoint: the classifier in CBGAN's loop")
    p.add_argument("--soft-labels", default=None, metavar="CLASSIFIER",
                   help="train-classifier checkpoint whose softmax (T = 1) labels each training image (softlabel-gan)")
    p.add_argument("--annotator", default=None, help="train-classifier checkpoint on balanced data, for evaluation")
    p.add_argument("--out", required=True, help="run directory (resumes when it holds a checkpoint of the same "
                                                "settings)")
    p.add_argument("--cb-reg", dest="cb_reg", default=None, action=argparse.BooleanOptionalAction,
                   help=OPTIONS["cb_reg"].help)
    p.add_argument("--d-sn", dest="d_sn", default=None, action=argparse.BooleanOptionalAction,
                   help=OPTIONS["d_sn"].help)
    p.add_argument("--d-channels-last", dest="d_channels_last", default=None, action=argparse.BooleanOptionalAction,
                   help=OPTIONS["d_channels_last"].help)
    for key, o in OPTIONS.items():
        if not o.flag or key == "seed":
            continue
        # unset flags fall to the method's defaults (Method.defaults), then the table's
        kw = dict(default=None, type=o.type, help=f"{o.help} (default {o.default!r}{_method_default_note(key)})")
        if o.choices:
            kw["choices"] = o.choices
        p.add_argument(_flag(key), dest=key, **kw)
    p.add_argument("--deterministic", action="store_true", help="torch.use_deterministic_algorithms (slower; on "
                   "GPUs needed for a resumed run to equal an uninterrupted one)")
    p.add_argument("--sync-bn", action="store_true", help="under torchrun on GPUs: SyncBatchNorm in G (batch "
                   "statistics over the global batch; CUDA only)")
    p.add_argument("--no-progress", action="store_true")


def _method_default_note(key):
    from .train.methods import get_method, method_names
    own = [f"{n}: {get_method(n).defaults[key]!r}" for n in method_names() if key in get_method(n).defaults]
    return "; " + ", ".join(own) if own else ""


def _train_settings(args):
    from .train.options import OPTIONS, check_options
    settings = {k: getattr(args, k) for k in OPTIONS if getattr(args, k, None) is not None}
    try:
        check_options(settings, label=_flag)
    except ValueError as e:
        raise UsageError(str(e)) from None
    return settings


def _check_train_flags_apply(args, settings, cls):
    """Every flag given is read by the method: a flag it would ignore is an error, not a silent no-op."""
    from .train.options import unused_options
    cb_reg = cls.cb_regularizer if settings.get("cb_reg") is None else settings["cb_reg"]
    from .train.options import GROUPS
    unused = unused_options(cls, settings, cb_reg)
    if args.classifier is not None and not cb_reg:
        unused.insert(0, "classifier")
    cb_named = any(k in GROUPS["cb"] or k == "classifier" for k in unused)
    who = f"method {args.method!r}" + (" without the CB regularizer (--cb-reg)" if cb_named else "")
    unused = [_flag(k) for k in unused]
    if args.soft_labels is not None and not cls.needs_soft_labels:
        unused.append("--soft-labels")
    if unused:
        raise UsageError(f"{', '.join(unused)}: not used by {who}")
    if cls.needs_soft_labels and args.soft_labels is None:
        raise UsageError(f"--soft-labels: method {args.method!r} needs the classifier whose softmax labels the "
                         "training images (a train-classifier checkpoint)")
    if cb_reg and args.classifier is None:
        raise UsageError(f"--classifier: {who} needs the classifier in the loop (a train-classifier checkpoint)")
    if args.image_size is not None:  # the networks' sizes, checked on the meta device (no memory, no time)
        import torch
        from .train.options import resolve
        s = resolve(cls.defaults, **settings)
        try:
            with torch.device("meta"):
                cls(10, [1] * 10, s).build(s["arch"], channels=1, image_size=args.image_size, width=s["width"],
                                           z_dim=s["z_dim"], d_sn=s["d_sn"])
        except ValueError as e:
            raise UsageError(f"--image-size: {e}") from None
    if args.sync_bn and int(os.environ.get("WORLD_SIZE", "1")) < 2:
        raise UsageError("--sync-bn: only under torchrun with more than one process")
    for name in ("classifier", "soft_labels", "annotator"):
        setattr(args, name, _existing_file(name, getattr(args, name)))


def _existing_file(name, path):
    """A file flag's path, absolute (so a run's config names it from anywhere), checked before any work."""
    if path is None:
        return None
    if not os.path.isfile(path):
        raise UsageError(f"{_flag(name)}: {path} " + ("is a directory, expected a file" if os.path.isdir(path)
                                                      else "does not exist"))
    return os.path.abspath(path)


@subcommand("train", help="train a GAN method (see `cbgan-ext methods`) on a (long-tailed) dataset",
            configure=_configure_train)
def _run_train(args):
    settings = _train_settings(args)  # every number checked before any work
    check_args(args, imbalance=float_check(1), threads=int_check(1), n_max=int_check(1), image_size=int_check(1),
               drop_fraction=float_check(0, 1, hi_open=True))
    _check_minority(args)
    _check_dataset_args(args)
    import torch
    from .data import get_dataset
    from .models.classifier import load_classifier
    from .train import distributed as dist
    from .train.gan import GANTrainer
    if args.threads:
        torch.set_num_threads(args.threads)
    from .train.methods import get_method
    _check_train_flags_apply(args, settings, get_method(args.method))
    device = dist.setup(args.device)  # under torchrun: the process group, this rank's device
    main_rank = dist.is_main()
    try:
        def load():
            return get_dataset(args.dataset, "train", root=args.root, image_size=args.image_size,
                               imbalance_ratio=args.imbalance, profile=args.profile, n_max=args.n_max,
                               seed=args.seed, download=args.download, selection=args.selection,
                               minority_class=args.minority_class, drop_fraction=args.drop_fraction)
        data = dist.local_main_first(load) if args.download else load()  # one download per node
        clf = load_classifier(args.classifier, map_location=device) if args.classifier else None
        ann = load_classifier(args.annotator, map_location=device) if args.annotator else None
        soft = None
        if args.soft_labels:
            from .train.classifier import soft_labels
            soft = soft_labels(args.soft_labels, data, device=device, use_cache=dist.is_main())
        trainer = GANTrainer(data, args.out, method=args.method, classifier=clf, annotator=ann, device=device,
                             progress=not args.no_progress, deterministic=args.deterministic, sync_bn=args.sync_bn,
                             soft_labels=soft, **settings)
        trainer.config.update(classifier=args.classifier if trainer.reg is not None else None,
                              annotator=args.annotator, soft_labels=args.soft_labels)
        best = trainer.run()
    finally:
        dist.shutdown()
    if best and main_rank:
        print(json.dumps({"best_step": best["step"], **{k: v for k, v in best["metrics"].items()}}))
    return 0


def _add_generator_option(p):
    p.add_argument("--generator", default="ema", choices=("ema", "raw"),
                   help="the EMA generator (G itself when the run keeps no EMA) or G as trained")


def _configure_eval(p):
    p.add_argument("--run", required=True, help="a `cbgan-ext train` run directory")
    p.add_argument("--checkpoint", default="best", choices=("best", "last"))
    p.add_argument("--annotator", default=None, help="classifier checkpoint (default: the run's annotator)")
    p.add_argument("--n", type=int, default=10000, help="generated samples (n/K per class for conditional runs)")
    p.add_argument("--fid", default="auto", choices=("auto", "inception", "annotator"),
                   help="Fréchet distance features: clean-fid's Inception (standard FID; needs its weights), the "
                        "annotator's (FD-annotator, always reported), or Inception too when its weights are present")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lpips-images", type=int, default=100,
                   help="LPIPS diversity over all pairs of this many fakes, and of this many per class for conditional "
                        "runs (Softlabel-GAN's 100); needs torchvision's AlexNet weights, else skipped; 0: off")
    p.add_argument("--plot", default=None, metavar="PNG",
                   help="conditional runs: write a bar chart of intra-FD per class, sorted by training count")
    _add_generator_option(p)


@subcommand("eval", help="metrics of a run against the balanced test split: annotator histogram, KL to uniform, "
            "FD-annotator (and FID when available); for conditional runs intra-FD, PRDC, class consistency and LPIPS "
            "(when its weights exist), --plot for intra-FD per class", configure=_configure_eval)
def _run_eval(args):
    check_args(args, n=int_check(2), seed=int_check(0), lpips_images=int_check(0))
    if args.lpips_images == 1:
        raise UsageError("--lpips-images: expected 0 (off) or >= 2 images (LPIPS compares pairs), got 1")
    if args.plot and not args.plot.lower().endswith(".png"):
        raise UsageError(f"--plot: expected a .png path, got {args.plot!r}")
    if args.plot:
        _check_writable("--plot", args.plot)
    check_device(args.device)
    args.annotator = _existing_file("annotator", args.annotator)
    from .train.gan import evaluate_run, load_run
    run = None
    if args.plot:
        run = load_run(args.run, args.checkpoint, args.device, args.generator)
        if not run.conditional:
            raise UsageError(f"--plot: the run {args.run} ({run.method}) is unconditional; it has no per-class "
                             "intra-FD to plot")
    res = evaluate_run(args.run, checkpoint=args.checkpoint, annotator=args.annotator, n=args.n, fid=args.fid,
                       device=args.device, seed=args.seed, lpips_images=args.lpips_images, generator=args.generator,
                       loaded=run)
    if args.plot:
        from .data import dataset_from_config
        from .pipeline import plot_intra_fd
        data = dataset_from_config(run.config["dataset"])
        plot_intra_fd(args.plot, {res["method"]: res}, list(run.config.get("class_counts") or data.class_counts),
                      list(getattr(data, "classes", range(data.num_classes))))
    print(json.dumps(res))
    return 0


def _configure_sample(p):
    p.add_argument("--run", required=True, help="a `cbgan-ext train` run directory")
    p.add_argument("--checkpoint", default="best", choices=("best", "last"))
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--class", dest="klass", type=int, default=None, metavar="K",
                   help="conditional runs: only class K (default: n/K of every class, a row per class)")
    p.add_argument("--out", default=None, help=".png (a grid) or .pt (a tensor in [-1, 1]); default RUN/samples.png")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    _add_generator_option(p)


@subcommand("sample", help="generate images from a trained run (EMA generator by default)",
            configure=_configure_sample)
def _run_sample(args):
    check_args(args, n=int_check(1), seed=int_check(0))
    import torch
    import torchvision
    from .train.evaluate import balanced_labels
    from .train.gan import load_run
    out = args.out or os.path.join(args.run, "samples.png")
    if not out.endswith((".png", ".pt", ".jpg")):
        raise UsageError(f"--out: expected a .png, .jpg or .pt path, got {out!r}")
    if args.out:  # the default lies in the run's folder, checked when the run is read
        _check_writable("--out", out)
    check_device(args.device)
    run = load_run(args.run, args.checkpoint, device=args.device, generator=args.generator)
    nrow = int(math.ceil(args.n ** 0.5))
    if args.klass is not None:
        if not run.conditional:
            raise UsageError(f"--class: the run {args.run} ({run.method}) is unconditional; it has no classes to "
                             "ask for")
        if not 0 <= args.klass < run.num_classes:
            raise UsageError(f"--class: expected a class in 0..{run.num_classes - 1}, got {args.klass}")
        y = torch.full((args.n,), args.klass, dtype=torch.int64)
    elif run.conditional:
        # class-major order: a grid row per class when n is a multiple of K
        y = balanced_labels(args.n, run.num_classes).sort(stable=True).values
        nrow = max(1, args.n // run.num_classes) if args.n % run.num_classes == 0 else nrow
    else:
        y = None
    with torch.no_grad():
        z = torch.randn(args.n, run.z_dim, generator=torch.Generator().manual_seed(args.seed)).to(args.device)
        x = (run.G(z, y.to(args.device)) if y is not None else run.G(z)).cpu()
    if out.endswith(".pt"):
        torch.save(x if y is None else {"images": x, "labels": y}, out)
    else:
        torchvision.utils.save_image(x, out, nrow=nrow, normalize=True, value_range=(-1, 1))
    print(out)
    return 0


def _configure_augment_eval(p):
    p.add_argument("--run", action="append", default=[], help="a GAN run directory (repeat for several methods)")
    p.add_argument("--out", required=True, help="directory of the classifiers and results.json (resumable)")
    p.add_argument("--checkpoint", default="best", choices=("best", "last"))
    p.add_argument("--rows", default="plain,oversample,mirror",
                   help="baseline rows besides the runs: comma-separated of plain, oversample, mirror")
    p.add_argument("--epochs", type=float, default=10)
    p.add_argument("--width", type=float, default=0.5, help="classifier channel multiplier")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr-schedule", default="cosine", choices=("step", "cosine", "constant"))
    p.add_argument("--augment", default="crop", choices=("crop-flip", "crop", "none"),
                   help="the classifier's augmentation (default crop: flips would blur the mirror row)")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated images")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-progress", action="store_true")


@subcommand("augment-eval", help="BAGAN's test: rebalance the training set with generated (or oversampled, or "
            "mirrored) minority images, train the classifier, report its minority-class accuracy",
            configure=_configure_augment_eval)
def _run_augment_eval(args):
    check_args(args, epochs=float_check(0, lo_open=True), width=float_check(0, lo_open=True),
               batch_size=int_check(1), threads=int_check(1), seed=int_check(0))
    rows = [r for r in args.rows.split(",") if r]
    bad = [r for r in rows if r not in ("plain", "oversample", "mirror")]
    if bad:
        raise UsageError(f"--rows: expected plain, oversample, mirror, got {bad}")
    for r in args.run:
        if not os.path.isdir(r):
            raise UsageError(f"--run: {r} is not a directory")
    if not args.run:
        raise UsageError("--run: give at least one GAN run (its dataset fixes the imbalanced set)")
    check_device(args.device)
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    from .train.augment_eval import augment_eval
    res = augment_eval(args.out, args.run, rows=rows, checkpoint=args.checkpoint, seed=args.seed, device=args.device,
                       progress=not args.no_progress, epochs=args.epochs, width=args.width,
                       batch_size=args.batch_size, lr_schedule=args.lr_schedule, augment=args.augment)
    for name, row in res["rows"].items():
        acc = row["minority_accuracy"]
        print(f"{name:>14}: minority accuracy {', '.join(f'{a:.3f}' for a in acc) if acc else 'n/a'}, balanced "
              f"{row['balanced_accuracy']:.3f} (+{row['added']} images)")
    return 0


def methods_table():
    """The README's table of methods, from the registry."""
    from .train.methods import get_method, method_names
    from .train.options import OPTIONS
    from .nn.gan_regularizers import class_conditional_bn_layers
    lines = ["| method | what it is | source | conditional | D head | loss | CB regularizer | --gsr / --lecam | "
             "main job |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for n in method_names():
        m = get_method(n)
        arch = m.defaults.get("arch", OPTIONS["arch"].default)
        G, _ = m(10, [10] * 10, {}).build(arch, channels=1, image_size=32, width=0.0625, z_dim=8)
        extra = [f for f, ok in (("gsr", class_conditional_bn_layers(G)), ("lecam", m.scalar_d_outputs)) if ok]
        lines.append(f"| `{n}` | {m.title} | {m.paper} | {'yes' if m.conditional else 'no'} | {m.d_head} | "
                     f"{m.loss} | {'on' if m.cb_regularizer else 'off (--cb-reg)'} | "
                     f"{', '.join(extra) or 'neither'} ({arch}) | {'yes' if m.in_main_job else 'no'} |")
    return "\n".join(lines)


@subcommand("methods", help="list the GAN methods (the README's table)", configure=lambda p: None)
def _run_methods(args):
    print(methods_table())
    return 0


# ------------------------------------------------------------------------------------------- the main job

def _configure_demo(p):
    from .pipeline import PRESETS
    p.add_argument("--config", metavar="FILE", help=_CONFIG_HELP)
    p.add_argument("--out", default="runs/demo", help="output directory (the run resumes when it exists)")
    p.add_argument("--preset", default="default", choices=tuple(PRESETS),
                   help="; ".join(f"{k}: {v['about']}" for k, v in PRESETS.items()))
    d = PRESETS["default"]

    def default(value):
        return f"(default: the preset's; {value} in the default preset)"
    p.add_argument("--steps", type=int, default=None,
                   help="cbgan section: GAN steps per method " + default(d["gan"]["steps"]))
    p.add_argument("--classifier-epochs", type=float, default=None,
                   help="cbgan section: epochs of the classifier in the loop " + default(d["classifier"]["epochs"]))
    p.add_argument("--annotator-epochs", type=float, default=None, help=default(d["annotator"]["epochs"]))
    p.add_argument("--gan-width", type=float, default=None, help="cbgan section " + default(d["gan"]["width"]))
    p.add_argument("--final-samples", type=int, default=None, help="cbgan section " + default(d["final_samples"]))
    p.add_argument("--weighting", default=None, choices=("paper", "official"),
                   help="CB weighting " + default(d["gan"]["weighting"]))
    p.add_argument("--lam", type=float, default=None, help="CB λ " + default(d["gan"]["lam"]))
    p.add_argument("--methods", default=None,
                   help="cbgan section: comma-separated methods (default: those of the main job)")
    p.add_argument("--sections", default="cbgan,bagan,softlabel",
                   help="comma-separated parts: cbgan (the main-job methods on the long-tailed data), bagan (BAGAN "
                        "vs ACGAN with one class dropped, and the augmented-classifier test) and softlabel "
                        "(Softlabel-GAN vs DiffAug-GAN on the lognormal profile)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", default=None, help="comma-separated seeds: run the job once per seed in OUT/seed<s> "
                   "and write OUT/summary.md (mean and spread)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads in all (default: torch's, the cores)")
    p.add_argument("--device", default="cpu", help="where every training and evaluation runs: cpu, cuda or cuda:N")
    p.add_argument("--jobs", type=int, default=None,
                   help="worker processes for the job's independent trainings, each with threads/jobs threads "
                        "(default: on cpu 2 where 2 cores are available, else 1; on cuda 1; at most --threads; 1 "
                        "trains everything in this process)")


@subcommand("demo", help="the main job: an annotator, then its sections (CBGAN and its baseline on long-tailed "
            "Fashion-MNIST, rho=100, with the classifier in the loop; BAGAN vs ACGAN; Softlabel-GAN vs DiffAug-GAN "
            "on the lognormal profile), then a report",
            configure=_configure_demo)
def _run_demo(args):
    positive = float_check(0, lo_open=True)
    check_args(args, steps=int_check(1), classifier_epochs=positive, annotator_epochs=positive, gan_width=positive,
               final_samples=int_check(2), lam=float_check(0), seed=int_check(0), threads=int_check(1),
               jobs=int_check(1))
    check_device(args.device)
    from .train.methods import method_names
    methods = None
    if args.methods:
        methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
        bad = [m for m in methods if m not in method_names()]
        if bad or not methods:
            raise UsageError(f"--methods: expected names among {', '.join(method_names())}, got {args.methods!r}")
        from .pipeline import BAGAN_METHODS, SOFTLABEL_METHODS
        own = [m for m in methods if m in BAGAN_METHODS + SOFTLABEL_METHODS]
        if own:
            raise UsageError(f"--methods: {', '.join(own)} run in their own section (--sections bagan / softlabel), "
                             "not among the cbgan section's methods")
    seeds = None
    if args.seeds:
        try:
            seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
        except ValueError:
            seeds = None
        if not seeds or min(seeds) < 0:
            raise UsageError(f"--seeds: expected comma-separated integers >= 0, got {args.seeds!r}")
    from .pipeline import SECTIONS, run, run_seeds
    sections = [x.strip() for x in args.sections.split(",") if x.strip()]
    if not sections or any(x not in SECTIONS for x in sections):
        raise UsageError(f"--sections: expected names among {', '.join(SECTIONS)}, got {args.sections!r}")
    cb_only = [f for f, v in (("--methods", methods), ("--steps", args.steps), ("--classifier-epochs",
                                                                             args.classifier_epochs),
                              ("--gan-width", args.gan_width), ("--final-samples", args.final_samples),
                              ("--weighting", args.weighting), ("--lam", args.lam)) if v is not None]
    if cb_only and "cbgan" not in sections:
        raise UsageError(f"{', '.join(cb_only)}: set the cbgan section, and --sections has no cbgan")
    from .pipeline import default_jobs
    import torch
    on_cpu = torch.device(args.device).type == "cpu"
    kw = dict(sections=sections, preset=args.preset, steps=args.steps, threads=args.threads, device=args.device,
              jobs=(default_jobs() if on_cpu else 1) if args.jobs is None else args.jobs,
              classifier_epochs=args.classifier_epochs,
              annotator_epochs=args.annotator_epochs, gan_width=args.gan_width, final_samples=args.final_samples,
              weighting=args.weighting, lam=args.lam, methods=methods)
    if seeds:
        print(run_seeds(args.out, seeds, **kw))
    else:
        run(args.out, seed=args.seed, **kw)
    return 0


if __name__ == "__main__":
    # Dispatch through the importable module so subcommands registered elsewhere land in one table.
    from cbgan_ext.cli import main as _main
    sys.exit(_main())
