"""Training: the round loop (:mod:`.loop`), its losses (:mod:`.losses`) and callbacks
(:mod:`.callbacks`), multi-process set-up (:mod:`.distributed`) and ROAR's retraining (:mod:`.roar`)."""
from .callbacks import Callback, at_epoch, at_iteration, every_epoch, every_iteration
from .cgc import CGCLoss  # registers the CGC losses (cgc, gc_mse) beside cross_entropy
from .losses import LOSSES, CrossEntropy, get_loss, register_loss
from .loop import RoundResult, autocast, evaluate, make_optimizer, make_scheduler, prepare_model, to_device, train_round

__all__ = ["Callback", "at_epoch", "at_iteration", "every_epoch", "every_iteration", "CGCLoss", "LOSSES", "CrossEntropy",
           "get_loss", "register_loss", "RoundResult", "autocast", "evaluate", "make_optimizer", "make_scheduler",
           "prepare_model", "to_device", "train_round"]
