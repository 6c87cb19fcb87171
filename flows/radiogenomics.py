"""The ``radiogenomics`` stage: tumour shape against genomic subtypes (Buda, Saha & Mazurowski 2019)."""

from __future__ import annotations

import sys

from flows.common import stage_flow, stage_main
from tasks import radiogenomics as radiogenomics_tasks
from unet.config import PipelineConfig
from unet.radiogenomics.stage import describe


@stage_flow("radiogenomics")
def radiogenomics_flow(config: PipelineConfig) -> dict:
    result = radiogenomics_tasks.run(config)
    print(describe(result))
    radiogenomics_tasks.publish_report(config, result)
    return result


def run(config: PipelineConfig) -> dict:
    return radiogenomics_flow(config)


if __name__ == "__main__":
    sys.exit(stage_main(run, __doc__))
