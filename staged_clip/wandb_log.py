"""wandb logging of a bake: resolving --wandb, starting a run that never prompts, images."""

import netrc
import os

from .errors import UserError, log
from .output import to_pixels


def wandb_mode(choice):
    """Resolve --wandb: auto is online with a configured login, else disabled (with a hint)."""
    if choice == "auto":
        choice = os.environ.get("WANDB_MODE", "online")
        if choice not in ("online", "offline", "disabled"):
            choice = "online"
        if choice == "online" and not logged_in():  # wandb would ask for a login
            log("wandb: no login found, not logging (run `wandb login`, or pass --wandb offline)")
            return "disabled"
        return choice
    if choice == "online" and not logged_in():
        raise UserError("--wandb online needs a wandb login: run `wandb login` or set WANDB_API_KEY, "
                        "or use --wandb offline")
    return choice


def logged_in():
    """Whether a wandb login is configured (an API key in the environment or ~/.netrc)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


class WandbLog:
    """Where a bake logs: the mode (wandb_mode's answer), the project and how often images go.

    After a run fails to start, later bakes of a batch do not try (and wait) again.
    """

    def __init__(self, mode="disabled", project="staged-clip", every=10):
        self.mode, self.project, self.every = mode, project, every

    def start(self, name, config):
        """A wandb run, or None when disabled or when wandb cannot start (never prompts)."""
        if self.mode == "disabled":
            return None
        try:
            import wandb
            return wandb.init(project=self.project, name=name, config=config, mode=self.mode,
                              reinit="finish_previous",
                              settings=wandb.Settings(silent=True, init_timeout=60, console="off"))
        except Exception as e:  # logging is a help, never a reason to lose a bake
            log(f"wandb: could not start ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                f"baking without logging")
            self.mode = "disabled"
            return None


def wandb_image(z, caption, palette=None):
    """A wandb.Image of z as it would be saved (quantized, or in its palette)."""
    import wandb
    return wandb.Image(to_pixels(z, palette=palette), caption=caption)
