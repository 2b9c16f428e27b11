"""``hydra_plugins.entropy_rl_launcher``: the population launcher under the name Hydra accepts.

Hydra instantiates a launcher only if its class lives in the ``hydra_plugins`` namespace and its
plugin scan registered it. The wheel ships this folder as ``hydra_plugins/entropy_rl_launcher``
(pyproject's package-dir), where the scan finds it; in a checkout rl.launcher.register_hydra_plugin
loads it under that name. The implementation is rl.launcher.PopulationLauncher; only the module
is imported here, so the scan registers this one class and nothing else.
"""

from rl import launcher as _launcher


class PopulationLauncher(_launcher.PopulationLauncher):
    """``hydra/launcher=population``: rl.launcher.PopulationLauncher (conf/hydra/launcher/population.yaml)."""
