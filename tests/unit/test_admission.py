"""Admission: with an allow-list, nothing a driver loads comes from outside it."""

from __future__ import annotations

from typing import Any

import pytest

from poller.admission import admit, is_gated_property, is_gated_variable, resource_entries
from poller.config import Settings
from poller.errors import InvalidRequest
from poller.schemas import JobSpec

JOBS = r"file:/opt/jobs/[A-Za-z0-9_.-]+"
EVIL = "http://attacker.example/x.jar"


def _settings(**overrides: Any) -> Settings:
    return Settings(allowed_app_resources=[JOBS], **overrides)


def _job(**fields: Any) -> JobSpec:
    return JobSpec.model_validate({"app_resource": "file:/opt/jobs/etl.py", **fields})


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"app_resource": "file:/tmp/etl.py"}, "app_resource"),
        ({"app_resource": "file:/opt/jobs/../../tmp/etl.py"}, "app_resource"),
        ({"app_resource": "file:/opt/jobs/%2e%2e/etl.py"}, "app_resource"),
        ({"spark_properties": {"spark.jars": EVIL}}, "spark.jars"),
        ({"spark_properties": {"spark.jars": f"file:/opt/jobs/a.jar, {EVIL}"}}, EVIL),
        ({"spark_properties": {"spark.jars": "ivy://org.evil:evil:1.0"}}, "spark.jars"),
        ({"spark_properties": {"spark.submit.pyFiles": EVIL}}, "spark.submit.pyFiles"),
        ({"spark_properties": {"spark.files": EVIL}}, "spark.files"),
        ({"spark_properties": {"spark.archives": f"{EVIL}#env"}}, "spark.archives"),
        ({"spark_properties": {"spark.jars.packages": "org.evil:evil:1.0"}}, "spark.jars.packages"),
        ({"spark_properties": {"spark.jars.repositories": "http://x"}}, "spark.jars.repositories"),
        ({"spark_properties": {"spark.jars.ivySettings": "/tmp/i.xml"}}, "spark.jars.ivySettings"),
        ({"spark_properties": {"spark.jars.ivy": "/tmp/ivy"}}, "spark.jars.ivy"),
        (
            {"spark_properties": {"spark.driver.extraJavaOptions": "-javaagent:/tmp/a.jar"}},
            "spark.driver.extraJavaOptions",
        ),
        (
            {"spark_properties": {"spark.executor.defaultJavaOptions": "-Dx=1"}},
            "spark.executor.defaultJavaOptions",
        ),
        (
            {"spark_properties": {"spark.driver.extraClassPath": "/tmp/evil"}},
            "spark.driver.extraClassPath",
        ),
        (
            {"spark_properties": {"spark.executor.extraLibraryPath": "/tmp"}},
            "spark.executor.extraLibraryPath",
        ),
        (
            {"spark_properties": {"spark.driver.resource.gpu.discoveryScript": "/tmp/x.sh"}},
            "discoveryScript",
        ),
        ({"spark_properties": {"spark.pyspark.python": "/bin/sh"}}, "spark.pyspark.python"),
        ({"spark_properties": {"spark.repl.class.uri": "http://x"}}, "spark.repl.class.uri"),
        (
            {"spark_properties": {"spark.sql.hive.metastore.jars": "maven"}},
            "spark.sql.hive.metastore.jars",
        ),
        (
            {"spark_properties": {"spark.executorEnv.LD_PRELOAD": "/tmp/x.so"}},
            "spark.executorEnv.LD_PRELOAD",
        ),
        ({"environment_variables": {"JAVA_TOOL_OPTIONS": "-javaagent:x"}}, "JAVA_TOOL_OPTIONS"),
        ({"environment_variables": {"_JAVA_OPTIONS": "-Dx"}}, "_JAVA_OPTIONS"),
        ({"environment_variables": {"JDK_JAVA_OPTIONS": "-Dx"}}, "JDK_JAVA_OPTIONS"),
        ({"environment_variables": {"LD_PRELOAD": "/tmp/x.so"}}, "LD_PRELOAD"),
        ({"environment_variables": {"LD_LIBRARY_PATH": "/tmp"}}, "LD_LIBRARY_PATH"),
        ({"environment_variables": {"CLASSPATH": "/tmp"}}, "CLASSPATH"),
        ({"environment_variables": {"PYTHONPATH": "/tmp"}}, "PYTHONPATH"),
        ({"environment_variables": {"PYTHONSTARTUP": "/tmp/x.py"}}, "PYTHONSTARTUP"),
        ({"environment_variables": {"PYTHONWARNINGS": "ignore::evil.X"}}, "PYTHONWARNINGS"),
        ({"environment_variables": {"PYSPARK_PYTHON": "/bin/sh"}}, "PYSPARK_PYTHON"),
        ({"environment_variables": {"SPARK_SUBMIT_OPTS": "-Dx"}}, "SPARK_SUBMIT_OPTS"),
        ({"environment_variables": {"SPARK_CLASSPATH": "/tmp"}}, "SPARK_CLASSPATH"),
        ({"environment_variables": {"SPARK_DIST_CLASSPATH": "/tmp"}}, "SPARK_DIST_CLASSPATH"),
        ({"environment_variables": {"SPARK_CONF_DIR": "/tmp"}}, "SPARK_CONF_DIR"),
        ({"environment_variables": {"SPARK_HOME": "/tmp"}}, "SPARK_HOME"),
        ({"environment_variables": {"JAVA_HOME": "/tmp"}}, "JAVA_HOME"),
        ({"environment_variables": {"PATH": "/tmp"}}, "PATH"),
        ({"environment_variables": {"BASH_ENV": "/tmp/x.sh"}}, "BASH_ENV"),
        ({"environment_variables": {"HADOOP_CONF_DIR": "/tmp"}}, "HADOOP_CONF_DIR"),
        (
            {
                "app_resource": "file:/opt/jobs/etl.jar",
                "main_class": "org.apache.spark.deploy.SparkSubmit",
                "app_args": ["--class", "Evil", EVIL],
            },
            "main_class",
        ),
        (
            {"app_resource": "file:/opt/jobs/etl.jar", "main_class": "jdk.jshell.JShell"},
            "main_class",
        ),
    ],
)
def test_what_loads_code_past_the_allow_list_is_refused(fields: dict[str, Any], named: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        admit(_job(**fields), _settings())
    assert named in refused.value.message


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"app_resource": "file:/opt/jobs/etl.jar", "main_class": "com.acme.Etl"},
        {"app_resource": "file:/opt/jobs/ex.jar", "main_class": "org.apache.spark.examples.Pi"},
        {"spark_properties": {"spark.submit.pyFiles": "file:/opt/jobs/a.zip,file:/opt/jobs/b.py"}},
        {"spark_properties": {"spark.jars": " file:/opt/jobs/a.jar , ,file:/opt/jobs/b.jar"}},
        {"spark_properties": {"spark.files": "file:/opt/jobs/...data"}},
        {"spark_properties": {"spark.driver.memory": "1g", "spark.executor.cores": "2"}},
        {"spark_properties": {"spark.executorEnv.TEAM": "ingest"}},
        {"environment_variables": {"SPARK_USER": "etl", "TEAM": "ingest"}},
    ],
)
def test_what_stays_inside_the_allow_list_passes(fields: dict[str, Any]) -> None:
    admit(_job(**fields), _settings())


def test_the_operator_can_allow_named_properties_variables_and_main_classes() -> None:
    job = _job(
        app_resource="file:/opt/jobs/etl.jar",
        main_class="org.apache.spark.deploy.SparkSubmit",
        spark_properties={
            "spark.driver.extraJavaOptions": "-XX:+UseSerialGC",
            "spark.jars.packages": "org.acme:lib:1.0",
            "spark.executorEnv.PYTHONUNBUFFERED": "1",
        },
        environment_variables={"PYTHONUNBUFFERED": "1"},
    )
    with pytest.raises(InvalidRequest):
        admit(job, _settings())
    admit(
        job,
        _settings(
            allowed_spark_properties=["spark.driver.extraJavaOptions", "spark.jars.packages"],
            allowed_environment_variables=["PYTHONUNBUFFERED"],
            allowed_main_classes=[r"org\.apache\.spark\.deploy\.SparkSubmit"],
        ),
    )


def test_a_main_class_allow_list_is_the_whole_answer() -> None:
    settings = _settings(allowed_main_classes=[r"com\.acme\..+"])
    admit(_job(app_resource="file:/opt/jobs/etl.jar", main_class="com.acme.Etl"), settings)
    with pytest.raises(InvalidRequest, match="main_class"):
        admit(_job(app_resource="file:/opt/jobs/etl.jar", main_class="org.other.Main"), settings)


def test_without_an_allow_list_callers_are_trusted() -> None:
    job = _job(
        app_resource="http://anywhere/x.jar",
        main_class="org.apache.spark.deploy.SparkSubmit",
        spark_properties={"spark.jars.packages": "a:b:1", "spark.jars": EVIL},
        environment_variables={"LD_PRELOAD": "/tmp/x.so"},
    )
    admit(job, Settings(allowed_app_resources=[]))


def test_classification_helpers() -> None:
    assert resource_entries(" a, ,b,") == ["a", "b"]
    assert is_gated_property("spark.yarn.am.extraJavaOptions")
    assert not is_gated_property("spark.jars")  # a resource list: its entries are checked
    assert not is_gated_property("spark.sql.shuffle.partitions")
    assert is_gated_variable("ld_preload")
    assert not is_gated_variable("SPARK_USER")
