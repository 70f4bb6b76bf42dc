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
from lottery_xai.cli import main_entry, parse, resolve_device
from lottery_xai.errors import UserError
from lottery_xai.pipeline.human_study import export_stimuli
from lottery_xai.report.human_study import analyse, print_tables, simulate_and_plan, write_task_pages
from lottery_xai.rundir import RunDir


def arguments(p):
    p.add_argument("command", choices=["export", "analyse", "simulate"], help="what to do")
    p.add_argument("results", nargs="*", help="analyse: Mechanical Turk result files (.csv)")
    p.add_argument("--preference", type=float, default=0.6, help="simulate: share of decisive votes for the sparser round")
    p.add_argument("--equal-share", type=float, default=0.2, help="simulate: share of 'equal' answers")
    p.add_argument("--agreement", type=float, default=0.3, help="simulate: Krippendorff's alpha of the answers")
    p.add_argument("--accuracy", default="0.85", help="simulate: experiment 2 accuracy, one value or one per round (0.86,0.86,0.81)")
    p.add_argument("--dont-know", type=float, default=0.05, help="simulate: share of \"don't know\" answers")
    p.add_argument("--workers", type=int, default=0, help="simulate: answers per task (default human_study.workers_per_item)")
    p.add_argument("--seed", type=int, default=None, help="simulate: seed of the draws (default: the config's seed)")


@main_entry
def main():
    args, cfg = parse(__doc__, extra=arguments)
    run = RunDir(cfg)
    if args.command == "export":
        export_stimuli(run, resolve_device(cfg.device), args.round_list if args.rounds else None, force=args.force)
        write_task_pages(run)
    elif args.command == "analyse":
        if not args.results:
            raise UserError("analyse needs the result files: python main_human_study.py analyse RESULTS.csv [...]")
        print_tables(analyse(run, args.results))
    else:
        simulate_and_plan(run, preference=args.preference, equal_share=args.equal_share, agreement=args.agreement,
                          accuracy=args.accuracy, dont_know=args.dont_know, workers=args.workers, seed=args.seed)


if __name__ == "__main__":
    main()
