"""A trainer's whole state, to check that a call which raised changed nothing."""

import torch


def snapshot(trainer):
    """Parameters, optimizer and scheduler state, epoch, history and skipped steps."""
    scheduler = trainer.scheduler.state_dict() if trainer.scheduler is not None else None
    return (
        [p.detach().clone() for p in trainer.model.parameters()],
        trainer.epoch,
        list(trainer.history),
        repr(trainer.optimizer.state_dict()),
        repr(scheduler),
        trainer.skipped_steps,
    )


def assert_unchanged(trainer, before):
    params, epoch, history, optimizer, scheduler, skipped = before
    assert all(torch.equal(a, b) for a, b in zip(params, trainer.model.parameters(), strict=False))
    assert trainer.epoch == epoch and trainer.history == history and trainer.skipped_steps == skipped
    assert repr(trainer.optimizer.state_dict()) == optimizer
    assert repr(trainer.scheduler.state_dict() if trainer.scheduler is not None else None) == scheduler
