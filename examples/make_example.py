"""Write examples/inception_mini.onnx, the bundled example model.

An Inception-style network (stem conv-bn-relu, 8 Inception blocks with residual Adds, pooling
head) with seeded random weights and a symbolic batch dimension "N". Full of what the fusion
passes target: conv+bn+relu chains and parallel 1x1 convs feeding concats. Running the script
again writes the same bytes (tests/test_examples.py checks that against the committed file).

    python examples/make_example.py [-o PATH]
    optgraph run examples/inception_mini.onnx -o /tmp/out.onnx --passes default
"""

from __future__ import annotations

import argparse
from pathlib import Path

from optgraph.passes.testing.networks import inception_like

DEFAULT_PATH = Path(__file__).with_name("inception_mini.onnx")


def make() -> bytes:
    model = inception_like(blocks=8, channels=32, spatial=32, batch="N", seed=0)
    model.doc_string = "optgraph example: Inception-style network with random weights (examples/make_example.py)"
    model.metadata_props.add(key="source", value="examples/make_example.py")
    return model.SerializeToString(deterministic=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, default=DEFAULT_PATH,
                        help=f"where to write (default {DEFAULT_PATH})")
    args = parser.parse_args(argv)
    args.output.write_bytes(make())
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
