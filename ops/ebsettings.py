"""What a source tree declares for Elastic Beanstalk in `.ebextensions/*.config`.

ops.release reads it twice before a deploy:

- against the environment's effective settings: values set through the API (by
  `eb create`'s "recommended values", the console, `eb config`) win over
  `.ebextensions`, so the deployment policy and health settings the repository
  declares may not be what runs (`WATCHED`, `setting_differences`);
- against the last verified version's bundle: an Immutable deployment cannot carry
  configuration files that change option settings or add resources, so such a
  release is found before it fails (`config_change`).

Values are compared as the API reports them: strings ("true", "1800").
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

Key = tuple[str, str]  # (namespace, option name)

# The settings whose silent override would make the pipeline lie about its safety:
# how a version reaches instances (and how much traffic it gets, for how long, before
# all of it), how health is judged, how configuration changes replace instances.
WATCHED: tuple[Key, ...] = (
    ("aws:elasticbeanstalk:command", "DeploymentPolicy"),
    ("aws:elasticbeanstalk:trafficsplitting", "NewVersionPercent"),
    ("aws:elasticbeanstalk:trafficsplitting", "EvaluationTime"),
    ("aws:elasticbeanstalk:application", "Application Healthcheck URL"),
    ("aws:elasticbeanstalk:environment:process:default", "HealthCheckPath"),
    ("aws:elasticbeanstalk:healthreporting:system", "SystemType"),
    ("aws:autoscaling:updatepolicy:rollingupdate", "RollingUpdateType"),
)


def read_configs(directory: Path) -> dict[str, str]:
    """{file name: text} of every .ebextensions/*.config under a source tree."""
    return {path.name: path.read_text() for path in sorted(directory.glob("*.config"))}


def parse(texts: Mapping[str, str]) -> list[dict[str, Any]]:
    """Each config file as a mapping, in the order Elastic Beanstalk applies them."""
    loaded = []
    for name in sorted(texts):
        config = yaml.safe_load(texts[name]) or {}
        if not isinstance(config, dict):
            raise ValueError(f".ebextensions/{name} is not a YAML mapping")
        loaded.append(config)
    return loaded


def as_api_value(value: Any) -> str:
    """An option value as DescribeConfigurationSettings reports it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def option_settings(texts: Mapping[str, str]) -> dict[Key, str]:
    """Every option setting, {(namespace, name): value}; a later file wins, as on EB."""
    settings: dict[Key, str] = {}
    for config in parse(texts):
        for namespace, options in (config.get("option_settings") or {}).items():
            for name, value in options.items():
                settings[(namespace, name)] = as_api_value(value)
    return settings


def resources(texts: Mapping[str, str]) -> dict[str, Any]:
    """Every CloudFormation resource the config files add, by logical name."""
    found: dict[str, Any] = {}
    for config in parse(texts):
        found.update(config.get("Resources") or {})
    return found


@dataclass
class ConfigChange:
    """What a release changes in option settings and resources, against a baseline."""

    settings: dict[Key, str] = field(default_factory=dict)  # added or changed values
    removed: list[Key] = field(default_factory=list)
    resources: list[str] = field(default_factory=list)  # added, changed or removed

    def __bool__(self) -> bool:
        return bool(self.settings or self.removed or self.resources)

    def describe(self) -> str:
        parts = [f"{ns} {name} -> {value!r}" for (ns, name), value in self.settings.items()]
        parts += [f"{ns} {name} removed" for ns, name in self.removed]
        parts += [f"resource {name}" for name in self.resources]
        return "; ".join(parts) or "no configuration change"


def config_change(old: Mapping[str, str], new: Mapping[str, str]) -> ConfigChange:
    """The option settings and resources `new` changes relative to `old`."""
    before, after = option_settings(old), option_settings(new)
    old_resources, new_resources = resources(old), resources(new)
    return ConfigChange(
        settings={key: value for key, value in after.items() if before.get(key) != value},
        removed=sorted(key for key in before if key not in after),
        resources=sorted(name for name in old_resources.keys() | new_resources.keys()
                         if old_resources.get(name) != new_resources.get(name)))


def setting_differences(declared: Mapping[Key, str], effective: Mapping[Key, str | None],
                        environment: str) -> list[str]:
    """One message per watched setting whose effective value is not the declared one,
    with the command that removes the API-set value so the declared one applies."""
    messages = []
    for key in WATCHED:
        if key not in declared or effective.get(key) == declared[key]:
            continue
        namespace, name = key
        messages.append(
            f"{namespace} {name} is {effective.get(key)!r} in {environment}, but the "
            f"repository declares {declared[key]!r} (a value set through the API wins over "
            f".ebextensions). Fix: aws elasticbeanstalk update-environment --environment-name "
            f"{environment} --options-to-remove 'Namespace={namespace},OptionName={name}'")
    return messages
