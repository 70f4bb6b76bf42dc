"""ACE concept discovery (after step 4): superpixels of each class's train images clustered into concepts at
the concept layer, every round, with CAVs, TCAV and the match to the dense round's concepts
-> ace/concepts.csv, ace/survival.csv, plots/ace_*.png

    python main_ace.py [--config config/BB_synthetic.yaml] [--rounds 0,4] [--force]
    (discovered concepts then go to steps 4 and 5 with --set "concepts_for_tcav=[all,ace:all]")
"""
from lottery_xai.cli import run_step

if __name__ == "__main__":
    run_step("ace", __doc__)
