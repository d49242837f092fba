"""Write a model's config.json and tokenizer files, without the weights, for
`perf/gradient_throughput.py --random-init DIR` on machines where the weights cannot be brought.

    python perf/export_model_config.py .gpu/smollm2-config              # the default SmolLM2-135M
    python perf/export_model_config.py OUT_DIR --model PATH_OR_NAME
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def export(out_dir: str | Path, model: str | None = None) -> list[str]:
    from ftrace.model import load_model

    lm = load_model(model)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = lm.model.config
    config.save_pretrained(out)
    lm.tokenizer.save_pretrained(out)
    for weights in [*out.glob("*.safetensors"), *out.glob("*.bin")]:  # never the weights
        weights.unlink()
    return sorted(p.name for p in out.iterdir())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--model", default=None, help="model name or path (default: ftrace's default model)")
    args = ap.parse_args()
    files = export(args.out_dir, args.model)
    print(f"{args.out_dir}: {', '.join(files)}")


if __name__ == "__main__":
    main()
