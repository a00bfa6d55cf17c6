"""Parses Prometheus text with Prometheus' own Python client.

Reads the text on stdin, parses it with
`prometheus_client.parser.text_string_to_metric_families` (which raises on
anything it cannot read) and prints JSON: {"families": {name: type},
"samples": [[name, labels, value], ...]}, for `tests/tests/metrics.rs`.
"""

import json
import sys

from prometheus_client.parser import text_string_to_metric_families


def main():
    families = {}
    samples = []
    for family in text_string_to_metric_families(sys.stdin.read()):
        families[family.name] = family.type
        for sample in family.samples:
            samples.append([sample.name, sample.labels, sample.value])
    json.dump({"families": families, "samples": samples}, sys.stdout)


if __name__ == "__main__":
    main()
