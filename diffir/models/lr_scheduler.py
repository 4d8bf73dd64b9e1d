"""Learning-rate schedules the official configs use that basicsr 1.4.2 lacks."""
import math

from basicsr.models.lr_scheduler import get_position_from_periods
from torch.optim.lr_scheduler import LRScheduler


class CosineAnnealingRestartCyclicLR(LRScheduler):
    """Cosine annealing in consecutive cycles (Restormer / DiffIR deblurring).

    Cycle i lasts ``periods[i]`` iterations and anneals from ``restart_weights[i] * base_lr`` towards
    ``eta_mins[i]``. The official deblurring S1 config sets eta_mins[0] = 2.85e-4 above its base lr
    of 2e-4, so the LR rises during the first cycle; that is reproduced, not corrected.
    """

    def __init__(self, optimizer, periods, restart_weights=(1,), eta_mins=(0,), last_epoch=-1):
        if not len(periods) == len(restart_weights) == len(eta_mins):
            raise ValueError("periods, restart_weights and eta_mins must have the same length, got "
                             f"{len(periods)}, {len(restart_weights)}, {len(eta_mins)}")
        self.periods = list(periods)
        self.restart_weights = list(restart_weights)
        self.eta_mins = list(eta_mins)
        self.cumulative_period = [sum(self.periods[: i + 1]) for i in range(len(self.periods))]
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        cycle = get_position_from_periods(self.last_epoch, self.cumulative_period)
        if cycle is None:  # past the last period: stay in the last cycle
            cycle = len(self.periods) - 1
        start = self.cumulative_period[cycle - 1] if cycle > 0 else 0
        progress = (self.last_epoch - start) / self.periods[cycle]
        eta_min, weight = self.eta_mins[cycle], self.restart_weights[cycle]
        return [eta_min + weight * 0.5 * (base_lr - eta_min) * (1 + math.cos(math.pi * progress))
                for base_lr in self.base_lrs]
