"""The shared parameter table (params.py) as ROS 2 parameters of a node: declared with
descriptors, start values checked before rclpy sees them, integers taken for floats."""
from __future__ import annotations

from typing import Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.node import Node
from rclpy.parameter import Parameter

from .. import params as P


def descriptor(spec: P.ParamSpec) -> ParameterDescriptor:
    """What `ros2 param describe` shows: the description, choices, range, read-only."""
    description = spec.description
    if spec.choices:
        description += f" One of: {', '.join(map(str, spec.choices))}."
    result = ParameterDescriptor(description=description, read_only=spec.read_only)
    if spec.choices:
        result.additional_constraints = "one of: " + ", ".join(map(str, spec.choices))
    if spec.min is not None and spec.max is not None:
        if spec.type is int:
            result.integer_range = [IntegerRange(from_value=int(spec.min),
                                                 to_value=int(spec.max), step=0)]
        elif spec.type is float:
            result.floating_point_range = [FloatingPointRange(
                from_value=float(spec.min), to_value=float(spec.max), step=0.0)]
    return result


def declare_parameters(node: Node) -> dict[str, Any]:
    """Check every value given for `node`, then declare the parameters with them; returns
    the values (ParameterError naming the parameter for a bad one).

    rclpy itself would raise a traceback for a value outside the declared range or of
    the wrong type, accept an integer for a float parameter nowhere, and ignore a
    misspelt name. So the overrides are validated here first, with the same table and
    messages as everywhere else, and the parameters are declared with the checked values.
    """
    # rclpy keeps the overrides that apply to this node (command-line -p, the /** and
    # this node's sections of --params-file, parameter_overrides=) in this attribute;
    # sections for other nodes are already filtered out. There is no public accessor.
    overrides = {name: parameter.value for name, parameter
                 in getattr(node, "_parameter_overrides", {}).items()}
    for name in overrides:
        # rclpy's own parameters (use_sim_time, start_type_description_service) are
        # declared by now; qos_overrides.* are a ROS mechanism of their own.
        if (name not in P.SPECS and not node.has_parameter(name)
                and not name.startswith("qos_overrides.")):
            raise P.ParameterError(P.unknown_name_message(name))
    values = P.validate({k: v for k, v in overrides.items() if k in P.SPECS})
    for spec in P.PARAMETERS:
        node.declare_parameter(spec.name, values[spec.name], descriptor(spec),
                               ignore_override=True)
    return values


def integers_as_floats(parameters: list[Parameter]) -> list[Parameter]:
    """A pre-set-parameters callback: `ros2 param set ... latency_budget_ms 100` sends an
    integer; rclpy would refuse it for a float parameter, so it becomes the float it
    obviously means."""
    converted = []
    for parameter in parameters:
        spec = P.SPECS.get(parameter.name)
        if (spec is not None and spec.type is float
                and parameter.type_ == Parameter.Type.INTEGER):
            parameter = Parameter(parameter.name, value=float(parameter.value))
        converted.append(parameter)
    return converted
