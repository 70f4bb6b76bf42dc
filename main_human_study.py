"""The human study of explanations: stimuli for Mechanical Turk, the analysis of the answers, a simulator
-> human_study/ in the run directory

    python main_human_study.py export   [--config ...] [--rounds 0,2,4] [--set human_study.url_prefix=https://host/stimuli/]
    python main_human_study.py analyse  RESULTS.csv [MORE.csv ...]
    python main_human_study.py simulate [--preference 0.6] [--agreement 0.3] [--workers 5]

export: the images every chosen round (default: dense, rate 2, rate 32 by weights remaining) classifies
correctly, their Grad-CAM stimuli, a batch file and an answer key per experiment, the Mechanical Turk
layouts and preview.html. analyse: Mechanical Turk result files of that export -> human_study/analysis/.
simulate: result files drawn with a chosen preference and agreement, and the power of the design.
"""
from lottery_xai.cli import run_step

if __name__ == "__main__":
    run_step("human_study", __doc__)
