"""The run report: one self-contained HTML file (figures embedded, no network needed to open it) with
the config and provenance, accuracy, TCAV, the map grids, every metric with its interval and tests, the
null bands of the replicates, the sanity checks and a verdict per method -> report/report.html

    python main_report.py [--config config/BB_synthetic.yaml] [--force]
    (parts whose step has not run are listed as "not computed"; rebuilt only when an input is newer)
"""
from lottery_xai.cli import run_step

if __name__ == "__main__":
    run_step("report", __doc__)
