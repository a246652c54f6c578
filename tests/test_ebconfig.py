"""Elastic Beanstalk configuration as code: every file parses, and the options the
pipeline relies on are present and well formed. The platform hooks are run for real
(bash) with their AWS-side inputs replaced by files."""
from __future__ import annotations

import json
import re
import subprocess  # nosec B404 - runs git and the hook scripts
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from ops.targets import FIVE_XX_METRIC, TOTAL_METRIC

REPO = Path(__file__).resolve().parent.parent
EBEXT = REPO / ".ebextensions"
PLATFORM = REPO / ".platform"
TOP_LEVEL_KEYS = {"option_settings", "Resources", "packages", "files", "commands",
                  "container_commands", "services", "users", "groups", "sources",
                  "Outputs", "Parameters"}
LOG_RETENTION_DAYS = {1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096,
                      1827, 2192, 2557, 2922, 3288, 3653}
Options = dict[tuple[str, str], Any]


def config_files() -> list[Path]:
    return sorted(EBEXT.glob("*.config"))


def load(path: Path) -> dict[str, Any]:
    loaded = yaml.safe_load(path.read_text())
    assert isinstance(loaded, dict), f"{path.name} is not a mapping"
    return loaded


def all_options() -> Options:
    """Every option setting of every file, as {(namespace, name): value}; a setting
    made twice with different values is an error (the winner would depend on order)."""
    options: Options = {}
    for path in config_files():
        for namespace, settings in load(path).get("option_settings", {}).items():
            for name, value in settings.items():
                key = (namespace, name)
                assert options.get(key, value) == value, f"{key} set twice differently"
                options[key] = value
    return options


def all_resources() -> dict[str, Any]:
    resources: dict[str, Any] = {}
    for path in config_files():
        resources.update(load(path).get("Resources", {}))
    return resources


@pytest.mark.parametrize("path", config_files(), ids=lambda p: p.name)
def test_every_config_file_is_a_well_formed_ebextension(path: Path) -> None:
    config = load(path)
    assert set(config) <= TOP_LEVEL_KEYS, f"unknown keys {set(config) - TOP_LEVEL_KEYS}"
    for namespace, settings in config.get("option_settings", {}).items():
        assert re.fullmatch(r"aws:[a-z0-9:-]+", namespace), namespace
        assert isinstance(settings, dict) and settings, namespace
        for name, value in settings.items():
            if name != "ConfigDocument":
                assert isinstance(value, (str, int, bool)), (namespace, name, value)


def test_the_health_check_is_healthz_with_enhanced_health() -> None:
    options = all_options()
    assert options[("aws:elasticbeanstalk:environment:process:default",
                    "HealthCheckPath")] == "/healthz"
    assert options[("aws:elasticbeanstalk:application", "Application Healthcheck URL")] \
        == "/healthz"
    assert options[("aws:elasticbeanstalk:healthreporting:system", "SystemType")] \
        == "enhanced"


def test_enhanced_health_publishes_the_metrics_ops_release_and_the_alarm_read() -> None:
    document = all_options()[("aws:elasticbeanstalk:healthreporting:system",
                              "ConfigDocument")]
    published = document["CloudWatchMetrics"]["Environment"]
    assert published[FIVE_XX_METRIC] == 60 and published[TOTAL_METRIC] == 60
    assert document["Version"] == 1


def test_deployments_split_traffic_with_a_canary_and_the_docs_say_why() -> None:
    """TrafficSplitting (docs/deploying.md, "Choosing the deployment policy"), with the
    option names and ranges of EB's aws:elasticbeanstalk:trafficsplitting namespace."""
    options = all_options()
    assert options[("aws:elasticbeanstalk:command", "DeploymentPolicy")] == "TrafficSplitting"
    assert options[("aws:elasticbeanstalk:command", "IgnoreHealthCheck")] == "false"
    share = int(options[("aws:elasticbeanstalk:trafficsplitting", "NewVersionPercent")])
    minutes = int(options[("aws:elasticbeanstalk:trafficsplitting", "EvaluationTime")])
    assert 1 <= share <= 25 and 3 <= minutes <= 600
    assert options[("aws:elasticbeanstalk:environment", "LoadBalancerType")] == "application"
    assert "Why TrafficSplitting" in (REPO / "docs" / "deploying.md").read_text()


def test_ops_release_watches_the_whole_evaluation_within_its_deploy_timeout() -> None:
    """The canary is watched until Elastic Beanstalk promotes it: launching the new
    instances (up to the command Timeout), the evaluation, then the promotion must fit
    in --deploy-timeout, or ops.release would abort a deployment that was going well."""
    from ops.release import Options

    options = all_options()
    evaluation = int(options[("aws:elasticbeanstalk:trafficsplitting", "EvaluationTime")]) * 60
    launch_and_promotion = 15 * 60
    assert evaluation + launch_and_promotion <= Options().deploy_timeout


def test_the_settings_ops_release_checks_include_the_canary_s_share_and_time() -> None:
    from ops import ebsettings

    declared = ebsettings.option_settings(ebsettings.read_configs(EBEXT))
    for key in [("aws:elasticbeanstalk:trafficsplitting", "NewVersionPercent"),
                ("aws:elasticbeanstalk:trafficsplitting", "EvaluationTime")]:
        assert key in ebsettings.WATCHED and key in declared


def test_logs_and_health_events_stream_to_cloudwatch_with_retention() -> None:
    options = all_options()
    for namespace, switch in (("aws:elasticbeanstalk:cloudwatch:logs", "StreamLogs"),
                              ("aws:elasticbeanstalk:cloudwatch:logs:health",
                               "HealthStreamingEnabled")):
        assert options[(namespace, switch)] == "true"
        assert int(options[(namespace, "RetentionInDays")]) in LOG_RETENTION_DAYS
        assert options[(namespace, "DeleteOnTerminate")] == "false"


def alarms() -> dict[str, dict[str, Any]]:
    return {name: r["Properties"] for name, r in all_resources().items()
            if r["Type"] == "AWS::CloudWatch::Alarm"}


def test_every_alarm_mails_one_configurable_address_through_sns() -> None:
    options, resources = all_options(), all_resources()
    topics = {ref["Ref"] for alarm in alarms().values() for ref in alarm["AlarmActions"]}
    assert len(alarms()) == 3 and len(topics) == 1
    topic = resources[topics.pop()]
    assert topic["Type"] == "AWS::SNS::Topic"
    [subscription] = topic["Properties"]["Subscription"]
    assert subscription["Protocol"] == "email"
    email_option = subscription["Endpoint"]["Fn::GetOptionSetting"]["OptionName"]
    assert "@" in options[("aws:elasticbeanstalk:customoption", email_option)]
    for alarm in alarms().values():
        assert alarm["OKActions"] == alarm["AlarmActions"]


def test_the_5xx_rate_alarm_reads_the_metrics_enhanced_health_publishes() -> None:
    options = all_options()
    alarm = alarms()["FiveXXRateAlarm"]
    threshold_option = alarm["Threshold"]["Fn::GetOptionSetting"]["OptionName"]
    assert float(options[("aws:elasticbeanstalk:customoption", threshold_option)]) > 0
    queries = {q["Id"]: q for q in alarm["Metrics"]}
    [returned] = [q for q in queries.values() if q["ReturnData"]]
    referenced = set(re.findall(r"[a-z]\w*", returned["Expression"])) - {"IF"}
    assert referenced <= set(queries), f"expression uses unknown ids {referenced}"
    metrics = {q["MetricStat"]["Metric"]["MetricName"]: q["MetricStat"]
               for q in queries.values() if "MetricStat" in q}
    assert set(metrics) == {FIVE_XX_METRIC, TOTAL_METRIC}
    for stat in metrics.values():
        assert stat["Metric"]["Namespace"] == "AWS/ElasticBeanstalk"
        assert stat["Metric"]["Dimensions"] == [
            {"Name": "EnvironmentName", "Value": {"Ref": "AWSEBEnvironmentName"}}]
        assert stat["Stat"] == "Sum" and stat["Period"] == 60


def test_a_full_outage_pages_from_the_load_balancers_own_metrics() -> None:
    """With no healthy instance, instances publish nothing and the load balancer
    answers 5xx itself: two alarms on the load balancer's metrics see that."""
    lb = {"Name": "LoadBalancer",
          "Value": {"Fn::GetAtt": ["AWSEBV2LoadBalancer", "LoadBalancerFullName"]}}
    elb_5xx = alarms()["LoadBalancerFiveXXAlarm"]
    assert (elb_5xx["Namespace"], elb_5xx["MetricName"]) == ("AWS/ApplicationELB",
                                                             "HTTPCode_ELB_5XX_Count")
    assert elb_5xx["Dimensions"] == [lb] and elb_5xx["Statistic"] == "Sum"
    hosts = alarms()["NoHealthyHostAlarm"]
    assert (hosts["Namespace"], hosts["MetricName"]) == ("AWS/ApplicationELB",
                                                         "HealthyHostCount")
    assert hosts["Dimensions"][0] == lb
    assert hosts["Dimensions"][1]["Value"]["Fn::GetAtt"][0] == "AWSEBV2LoadBalancerTargetGroup"
    assert (hosts["Statistic"], hosts["ComparisonOperator"], hosts["Threshold"]) == \
        ("Minimum", "LessThanThreshold", 1)
    assert hosts["TreatMissingData"] == "breaching", "an outage that reports nothing is OK"


def test_the_data_directory_is_on_the_efs_mount() -> None:
    options = all_options()
    env = "aws:elasticbeanstalk:application:environment"
    mount = options[(env, "EFS_MOUNT_DIR")]
    assert options[(env, "DATA_DIR")].startswith(mount.rstrip("/") + "/")
    efs = load(EBEXT / "05-efs.config")
    assert "amazon-efs-utils" in efs["packages"]["yum"]


def test_app_version_is_left_to_the_hook_not_shadowed_by_an_option() -> None:
    env = "aws:elasticbeanstalk:application:environment"
    assert (env, "APP_VERSION") not in all_options()
    assert (env, "MAX_UPLOAD_MB") in all_options()


def test_nginx_accepts_an_upload_of_max_upload_mb_with_its_envelope() -> None:
    max_mb = int(all_options()[("aws:elasticbeanstalk:application:environment",
                                "MAX_UPLOAD_MB")])
    text = (PLATFORM / "nginx" / "conf.d" / "upload.conf").read_text()
    match = re.search(r"^client_max_body_size\s+(\d+)m;$", text, re.MULTILINE)
    assert match, "no client_max_body_size <n>m; line"
    assert max_mb < int(match.group(1)) <= max_mb * 2


def test_platform_hooks_are_executable_bash_scripts_in_git() -> None:
    hooks = sorted(PLATFORM.glob("*hooks/*/*"))
    assert hooks
    staged = subprocess.run(["git", "ls-files", "-s", "--", *map(str, hooks)],  # nosec
                            cwd=REPO, capture_output=True, text=True, check=True).stdout
    for hook in hooks:
        rel = hook.relative_to(REPO).as_posix()
        assert "100755" in next((ln for ln in staged.splitlines() if ln.endswith(rel)), ""), \
            f"{rel} is not committed as executable"
        assert hook.read_text().startswith("#!/bin/bash\n")
        subprocess.run(["bash", "-n", str(hook)], check=True)  # nosec B603 B607


def test_the_procfile_starts_the_app_with_gunicorn() -> None:
    assert re.match(r"web: gunicorn .*application:application",
                    (REPO / "Procfile").read_text())


def test_the_eb_cli_config_example_targets_python_3_11() -> None:
    example = load(REPO / ".elasticbeanstalk" / "config.yml.example")
    assert "Python 3.11" in example["global"]["default_platform"]
    assert example["global"]["application_name"]


# --- the hooks, run for real ---------------------------------------------------------


def fake_get_config(tmp_path: Path, settings: dict[str, str]) -> Path:
    """Stands in for /opt/elasticbeanstalk/bin/get-config environment -k NAME."""
    script = tmp_path / "get-config"
    script.write_text("#!/bin/bash\n" + "".join(
        f'[ "$3" = "{k}" ] && echo "{v}" && exit 0\n' for k, v in settings.items())
        + "exit 1\n")
    script.chmod(0o755)
    return script


def run_hook(name: str, env: dict[str, str],
             kind: str = "hooks") -> subprocess.CompletedProcess[str]:
    hook = next(PLATFORM.glob(f"{kind}/*/{name}"))
    return subprocess.run(["bash", str(hook)], env={"PATH": "/usr/bin:/bin", **env},  # nosec
                          capture_output=True, text=True, timeout=30, check=False)


def test_the_efs_hook_fails_the_deploy_without_a_file_system_id(tmp_path: Path) -> None:
    get_config = fake_get_config(tmp_path, {"DATA_DIR": "/mnt/efs/shortener"})
    done = run_hook("01_mount_efs.sh", {"GET_CONFIG": str(get_config),
                                        "FSTAB": str(tmp_path / "fstab")})
    assert done.returncode == 1
    assert "EFS_FILE_SYSTEM_ID is ''" in done.stderr and "eb setenv" in done.stderr


def test_the_efs_hook_refuses_a_data_dir_outside_the_mount(tmp_path: Path) -> None:
    get_config = fake_get_config(tmp_path, {"EFS_FILE_SYSTEM_ID": "fs-0123456789abcdef0",
                                            "EFS_MOUNT_DIR": "/mnt/efs",
                                            "DATA_DIR": "/var/app/data"})
    done = run_hook("01_mount_efs.sh", {"GET_CONFIG": str(get_config),
                                        "FSTAB": str(tmp_path / "fstab")})
    assert done.returncode == 1
    assert "not inside the EFS mount /mnt/efs" in done.stderr
    assert not (tmp_path / "fstab").exists()


@pytest.mark.parametrize("manifest", [
    {"VersionLabel": "0123abc", "DeploymentId": 7, "Serial": 7},
    {"RuntimeSources": {"shortener": {"0123abc": {"s3url": ""}}}, "DeploymentId": 7},
], ids=["VersionLabel", "RuntimeSources"])
def test_the_version_hook_gives_the_web_service_the_deployed_label(
        tmp_path: Path, manifest: dict[str, Any]) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    done = run_hook("02_app_version.sh", {
        "APP_VERSION_MANIFEST": str(tmp_path / "manifest.json"),
        "SYSTEMD_DROPIN_DIR": str(tmp_path / "web.service.d"), "SYSTEMCTL": "true"})
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "web.service.d" / "app-version.conf").read_text() == \
        "[Service]\nEnvironment=APP_VERSION=0123abc\n"


def test_the_version_hook_rejects_a_label_that_could_break_the_unit_file(
        tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps({"VersionLabel": "x\nExecStart=/bin/sh"}))
    done = run_hook("02_app_version.sh", {
        "APP_VERSION_MANIFEST": str(tmp_path / "manifest.json"),
        "SYSTEMD_DROPIN_DIR": str(tmp_path / "web.service.d"), "SYSTEMCTL": "true"})
    assert done.returncode == 1 and "unexpected version label" in done.stderr
    assert not (tmp_path / "web.service.d").exists()


def test_a_configuration_deployment_runs_the_same_hooks_as_a_code_deployment() -> None:
    """eb setenv runs .platform/confighooks, not .platform/hooks: the EFS mount and the
    nginx cache directory must be there too, byte for byte the same scripts."""
    twins = sorted(p.relative_to(PLATFORM / "confighooks") for p in
                   (PLATFORM / "confighooks").rglob("*") if p.is_file())
    assert {str(t) for t in twins} >= {"prebuild/01_mount_efs.sh",
                                       "prebuild/00_nginx_cache_dir.sh"}
    for twin in twins:
        assert (PLATFORM / "confighooks" / twin).read_bytes() == \
            (PLATFORM / "hooks" / twin).read_bytes(), twin


def fake_mount_commands(tmp_path: Path) -> dict[str, str]:
    """mount, umount and mountpoint over a file listing what is mounted, logging calls."""
    state, log = tmp_path / "mounted", tmp_path / "calls"
    state.touch()
    scripts = {
        "MOUNT": f'echo "mount $*" >> {log}; echo "$1" >> {state}',
        "UMOUNT": f'echo "umount $*" >> {log}; grep -vx "$2" {state} > {state}.n; '
                  f'mv {state}.n {state}',
        "MOUNTPOINT": f'grep -qx "$2" {state}',
        "CHOWN": "true",
    }
    env = {}
    for name, body in scripts.items():
        script = tmp_path / name.lower()
        script.write_text(f"#!/bin/bash\n{body}\n")
        script.chmod(0o755)
        env[name] = str(script)
    return env


def run_efs_hook_on_a_mounted_instance(tmp_path: Path, fs_id: str, fstab: str,
                                       kind: str) -> subprocess.CompletedProcess[str]:
    """The EFS hook on an instance where {mount} is mounted as `fstab` says; mount,
    umount and mountpoint are fakes that log to tmp_path/calls."""
    mount_dir = tmp_path / "efs"
    get_config = fake_get_config(tmp_path, {"EFS_FILE_SYSTEM_ID": fs_id,
                                            "EFS_MOUNT_DIR": str(mount_dir),
                                            "DATA_DIR": f"{mount_dir}/shortener"})
    (tmp_path / "fstab").write_text(fstab.format(mount=mount_dir))
    commands = fake_mount_commands(tmp_path)
    (tmp_path / "mounted").write_text(f"{mount_dir}\n")
    return run_hook("01_mount_efs.sh", {"GET_CONFIG": str(get_config),
                                        "FSTAB": str(tmp_path / "fstab"), **commands}, kind)


@pytest.mark.parametrize("kind", ["hooks", "confighooks"])
def test_a_changed_efs_id_is_remounted_by_either_hook(tmp_path: Path, kind: str) -> None:
    new_id, old_id = "fs-0123456789abcdef0", "fs-00000000000000000"
    done = run_efs_hook_on_a_mounted_instance(
        tmp_path, new_id, f"UUID=abc / ext4 defaults 0 0\n{old_id}:/ {{mount}} efs _netdev 0 0\n",
        kind)
    mount_dir = tmp_path / "efs"
    assert done.returncode == 0, done.stderr
    assert f"changed from {old_id} to {new_id}" in done.stdout
    assert (tmp_path / "fstab").read_text() == (
        f"UUID=abc / ext4 defaults 0 0\n{new_id}:/ {mount_dir} efs _netdev,tls,noresvport 0 0\n")
    assert (tmp_path / "calls").read_text() == f"umount -l {mount_dir}\nmount {mount_dir}\n"


def test_an_unchanged_efs_id_is_left_mounted(tmp_path: Path) -> None:
    fs_id = "fs-0123456789abcdef0"
    done = run_efs_hook_on_a_mounted_instance(
        tmp_path, fs_id, f"{fs_id}:/ {{mount}} efs _netdev,tls,noresvport 0 0\n", "confighooks")
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "calls").exists()


def test_the_saved_configuration_sets_nothing_that_would_shadow_ebextensions() -> None:
    """`eb create --cfg shortener` skips the EB CLI's recommended values (awsebcli
    3.27.5 ebcli/objects/requests.py, add_client_defaults); a setting in the saved
    configuration would itself win over .ebextensions."""
    saved = load(REPO / ".elasticbeanstalk" / "saved_configs" / "shortener.cfg.yml")
    assert "OptionSettings" not in saved
    assert saved["AWSConfigurationTemplateVersion"] == "1.1.0.0"
    assert "--cfg shortener" in (REPO / "docs" / "deploying.md").read_text()


def test_the_instance_backup_script_prints_the_line_ops_release_reads() -> None:
    from ops.targets import BACKUP_SCRIPT

    files = load(EBEXT / "backup.config")["files"]
    script = files[BACKUP_SCRIPT]["content"]
    assert files[BACKUP_SCRIPT]["mode"] == "000755"
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)  # nosec B603 B607
    assert 'echo "$(stamp) INFO backup: snapshot $dest/$name"' in script
    assert re.search(r'dest="s3://\$BACKUP_BUCKET/\$\{BACKUP_PREFIX:-shortener\}\$\{1:\+/\$1\}"',
                     script)


@pytest.mark.parametrize("name", ["SMOKE_SCRIPT", "RECOVER_SCRIPT"])
def test_the_instance_scripts_ops_release_runs_through_ssm_exist(name: str) -> None:
    import ops.targets

    path = getattr(ops.targets, name)
    files = load(EBEXT / "backup.config")["files"]
    assert files[path]["mode"] == "000755"
    script = files[path]["content"]
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)  # nosec B603 B607
    module = {"SMOKE_SCRIPT": "ops.smoke --full", "RECOVER_SCRIPT": "ops.recover"}[name]
    assert f'exec "$APP_PYTHON" -m {module} ' in script


def test_every_new_instance_runs_the_full_smoke_test_before_it_gets_traffic() -> None:
    from ops.targets import SMOKE_SCRIPT

    hook = (PLATFORM / "hooks" / "postdeploy" / "03_smoke_test.sh").read_text()
    assert hook.rstrip().endswith(f"exec {SMOKE_SCRIPT} 10")


def test_the_hourly_snapshot_runs_on_every_instance_not_on_a_leader() -> None:
    """A traffic-splitting deployment has no leader instance (aws/elastic-beanstalk-
    roadmap#65): a leader_only cron would never be written."""
    config = load(EBEXT / "backup.config")
    assert "container_commands" not in config
    assert "/usr/local/bin/shortener-backup" in config["commands"]["02_backup_cron"]["command"]


def hourly_backup(tmp_path: Path) -> Path:
    """The committed backup script, with its shared settings file pointing at a data
    directory here and a python that only records that it took a snapshot."""
    from ops.targets import BACKUP_SCRIPT

    files = load(EBEXT / "backup.config")["files"]
    data = tmp_path / "efs"
    data.mkdir(exist_ok=True)
    python = tmp_path / "python"
    python.write_text('#!/bin/bash\n[ "$1" = -c ] && exec python3 "$@"\n'  # reads the manifest
                      'echo snapshot >> "$DATA_DIR/../taken"\nsleep "${HOLD:-0}"\n'
                      'echo \'{"name": "20261127T051700000000Z"}\'\n')
    python.chmod(0o755)
    settings = tmp_path / "app-env"
    settings.write_text(f"export DATA_DIR={data} BACKUP_BUCKET=b\nAPP_PYTHON={python}\n")
    script = tmp_path / "shortener-backup"
    script.write_text(files[BACKUP_SCRIPT]["content"].replace(
        "/usr/local/lib/shortener-app-env", str(settings)))
    return script


def test_one_hourly_snapshot_is_taken_however_many_instances_run_the_cron(
        tmp_path: Path) -> None:
    script = hourly_backup(tmp_path)
    first = subprocess.Popen(["bash", str(script)], env={"HOLD": "1", "PATH": "/usr/bin:/bin"},
                             stdout=subprocess.PIPE, text=True)  # nosec B603 B607
    time.sleep(0.3)  # the first instance holds the lock while it takes the snapshot
    during = subprocess.run(["bash", str(script)], capture_output=True, text=True,  # nosec
                            check=True)
    assert first.communicate(timeout=30)[0].rstrip().endswith(
        "INFO backup: snapshot s3://b/shortener/20261127T051700000000Z")
    after = subprocess.run(["bash", str(script)], capture_output=True, text=True,  # nosec
                           check=True)
    for run in (during.stdout, after.stdout):
        assert "another instance takes or took this hour's snapshot" in run
    assert (tmp_path / "taken").read_text() == "snapshot\n"
    deploy = subprocess.run(["bash", str(script), "pre-deploy/v2"], capture_output=True,  # nosec
                            text=True, check=True)
    assert "snapshot s3://b/shortener/pre-deploy/v2/" in deploy.stdout


def test_the_documented_version_lifecycle_policy_is_valid_and_prunes_before_the_quota() -> None:
    """Every push creates an application version; the quota is 1,000. The one-time
    command in docs/deploying.md must be one the API accepts (checked against botocore's
    service model) and keep fewer than 1,000."""
    import botocore.session
    from botocore.validate import ParamValidator

    guide = (REPO / "docs" / "deploying.md").read_text()
    match = re.search(r"cat > lifecycle\.json <<EOF\n(.*?)\nEOF\n(aws elasticbeanstalk "
                      r"update-application-resource-lifecycle [^\n]*\n[^\n]*)", guide, re.S)
    assert match, "docs/deploying.md has no lifecycle command"
    assert "--resource-lifecycle-config file://lifecycle.json" in match.group(2)
    config = json.loads(match.group(1).replace("$ACCOUNT", "123456789012"))
    model = botocore.session.get_session().get_service_model("elasticbeanstalk")
    shape = model.operation_model("UpdateApplicationResourceLifecycle").input_shape
    report = ParamValidator().validate(
        {"ApplicationName": "shortener", "ResourceLifecycleConfig": config}, shape)
    assert not report.has_errors(), report.generate_report()
    rule = config["VersionLifecycleConfig"]["MaxCountRule"]
    assert rule["Enabled"] is True and 10 <= rule["MaxCount"] < 1000
