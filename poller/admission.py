"""Admission: whether the operator's policy lets a job run, judged before anything is recorded.

With ``POLLER_ALLOWED_APP_RESOURCES`` set, callers are not trusted to choose code: everything a
driver (or its executors) loads must come from the allow-list. That covers the application
resource, each entry of the resource-list properties (``spark.jars``, ``spark.files``, ...), and
the ways to load code past the list: package resolution (``spark.jars.packages``, ...), JVM
options and class paths, interpreter executables, environment variables read by the JVM, the
dynamic loader, Python or the launch scripts, and main classes that launch other code. Those are
refused unless the operator names them in ``POLLER_ALLOWED_SPARK_PROPERTIES``,
``POLLER_ALLOWED_ENVIRONMENT_VARIABLES`` or ``POLLER_ALLOWED_MAIN_CLASSES``. Without the
allow-list callers are trusted and nothing here applies.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

from poller.config import Settings
from poller.errors import InvalidRequest
from poller.schemas import JobSpec

# Comma-separated lists of resources that Spark fetches for the driver or its executors.
RESOURCE_LIST_PROPERTIES = frozenset(
    {
        "spark.jars",
        "spark.files",
        "spark.archives",
        "spark.submit.pyFiles",
        "spark.yarn.dist.jars",
        "spark.yarn.dist.files",
        "spark.yarn.dist.archives",
        "spark.yarn.dist.pyFiles",
        "spark.yarn.jar",
        "spark.yarn.jars",
        "spark.yarn.archive",
    }
)
# Properties that load code from elsewhere (a repository, a class path, an executable, a URI).
GATED_PROPERTIES = frozenset(
    {
        "spark.pyspark.python",
        "spark.pyspark.driver.python",
        "spark.r.command",
        "spark.r.driver.command",
        "spark.python.daemon.module",
        "spark.python.worker.module",
        "spark.repl.class.uri",
        "spark.repl.class.outputDir",
    }
)
GATED_PROPERTY_PREFIXES = ("spark.jars.", "spark.sql.hive.metastore.jars")
GATED_PROPERTY_SUFFIXES = (
    ".extraJavaOptions",
    ".defaultJavaOptions",
    ".extraClassPath",
    ".extraLibraryPath",
    ".discoveryScript",
)
# Properties that set environment variables of the driver or executors: judged as variables.
ENVIRONMENT_PROPERTY_PREFIXES = (
    "spark.executorEnv.",
    "spark.yarn.appMasterEnv.",
    "spark.kubernetes.driverEnv.",
)
# Environment variables that make the JVM, the dynamic loader, Python, R or a shell (Spark's
# launch scripts are bash) load or run something, or that move the files they load from.
GATED_VARIABLES = frozenset(
    {
        "BASH_ENV",
        "BASHOPTS",
        "BROWSER",
        "EDITOR",
        "ENV",
        "GLIBC_TUNABLES",
        "GLOBIGNORE",
        "HOME",
        "IFS",
        "NODE_OPTIONS",
        "PAGER",
        "PERL5LIB",
        "PERL5OPT",
        "PERLLIB",
        "PROMPT_COMMAND",
        "PS4",
        "RUBYLIB",
        "RUBYOPT",
        "SHELL",
        "SHELLOPTS",
        "SPARK_PREPEND_CLASSES",
        "SPARK_SCALA_VERSION",
        "VISUAL",
    }
)
GATED_VARIABLE_PREFIXES = (
    "BASH_FUNC_",
    "DYLD_",
    "HADOOP_",
    "JAVA_",
    "JDK_",
    "KRB5",
    "LD_",
    "OPENSSL_",
    "PYSPARK_",
    "PYTHON",
    "R_",
    "SPARKR_",
    "YARN_",
)
GATED_VARIABLE_SUFFIXES = ("_OPTS", "_OPTIONS", "PATH", "_HOME", "_DIR")
# Main classes on Spark's own class path that load code named in their arguments (SparkSubmit,
# a Spark Connect or Thrift server, a REPL, a script engine, a database shell, ...). A deny-list
# cannot be complete: POLLER_ALLOWED_MAIN_CLASSES is the complete answer.
GATED_MAIN_CLASS_PREFIXES = (
    "org.apache.spark.",
    "java.",
    "javax.",
    "jdk.",
    "sun.",
    "com.sun.",
    "scala.",
    "py4j.",
    "groovy.",
    "org.apache.derby.",
    "org.apache.hadoop.",
    "org.apache.hive.",
    "org.apache.ivy.",
    "org.codehaus.",
)
OPEN_MAIN_CLASS_PREFIXES = ("org.apache.spark.examples.",)
MAX_ECHO_CHARS = 200


def admit(job: JobSpec, settings: Settings) -> None:
    """Return when ``settings`` let ``job`` run; raise InvalidRequest naming what they forbid.

    Only applies when POLLER_ALLOWED_APP_RESOURCES is set (untrusted callers).
    """
    patterns = settings.allowed_app_resources
    if not patterns:
        return
    if not _allowed_resource(job.app_resource, patterns):
        raise InvalidRequest("app_resource is not in the allowed list of this service")
    if job.main_class is not None and not _allowed_main_class(job.main_class, settings):
        raise InvalidRequest(f"main_class {job.main_class!r} is not allowed by this service")
    for name, value in job.spark_properties.items():
        _check_property(name, value, settings)
    allowed_variables = set(settings.allowed_environment_variables)
    for name in job.environment_variables:
        if name not in allowed_variables and is_gated_variable(name):
            raise InvalidRequest(f"environment_variables[{name!r}] is not allowed by this service")


def _check_property(name: str, value: str, settings: Settings) -> None:
    if name in settings.allowed_spark_properties:
        return
    if name in RESOURCE_LIST_PROPERTIES:
        for entry in resource_entries(value):
            if not _allowed_resource(entry, settings.allowed_app_resources):
                raise InvalidRequest(
                    f"spark_properties[{name!r}]: {_echo(entry)} is not in the allowed list of "
                    "this service"
                )
        return
    variable = next(
        (name[len(p) :] for p in ENVIRONMENT_PROPERTY_PREFIXES if name.startswith(p)), None
    )
    if variable is not None:
        gated = variable not in settings.allowed_environment_variables and is_gated_variable(
            variable
        )
    else:
        gated = is_gated_property(name)
    if gated:
        raise InvalidRequest(f"spark_properties[{name!r}] is not allowed by this service")


def is_gated_property(name: str) -> bool:
    """Whether setting ``name`` lets a caller load code from outside the allow-list."""
    return (
        name in GATED_PROPERTIES
        or name.startswith(GATED_PROPERTY_PREFIXES)
        or name.endswith(GATED_PROPERTY_SUFFIXES)
    )


def is_gated_variable(name: str) -> bool:
    """Whether environment variable ``name`` can make a process load or run other code."""
    upper = name.upper()
    return (
        upper in GATED_VARIABLES
        or upper.startswith(GATED_VARIABLE_PREFIXES)
        or upper.endswith(GATED_VARIABLE_SUFFIXES)
    )


def resource_entries(value: str) -> list[str]:
    """The entries of a resource-list property, split the way Spark splits them."""
    return [entry.strip() for entry in value.split(",") if entry.strip()]


def _allowed_resource(resource: str, patterns: list[str]) -> bool:
    # A ".." segment (also percent-encoded) climbs out of a directory a pattern allows.
    segments = re.split(r"[/\\]", unquote(resource))
    if ".." in segments:
        return False
    return any(re.fullmatch(pattern, resource) for pattern in patterns)


def _allowed_main_class(main_class: str, settings: Settings) -> bool:
    if settings.allowed_main_classes:
        return any(re.fullmatch(p, main_class) for p in settings.allowed_main_classes)
    return main_class.startswith(OPEN_MAIN_CLASS_PREFIXES) or not main_class.startswith(
        GATED_MAIN_CLASS_PREFIXES
    )


def _echo(value: str) -> str:
    return repr(value if len(value) <= MAX_ECHO_CHARS else value[:MAX_ECHO_CHARS] + "...")
