"""What the three kinds share: the model base, CEL rule markers, field types and conditions."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    StringConstraints,
)
from pydantic.alias_generators import to_camel
from pydantic.config import JsonDict
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

GROUP = "iam.kubeiam.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
CATEGORY = "iam"

ACCOUNT_NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
ACCOUNT_NAME_MAX_LENGTH = 63
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
ROLE_SLUG_PATTERN = r"^[a-z][a-z0-9-]*(\.[a-z][a-z0-9-]*)*$"

# FieldValueDuplicate is left out on purpose: the API server prints it without the message.
CelReason = Literal["FieldValueInvalid", "FieldValueForbidden", "FieldValueRequired"]


class ApiModel(BaseModel):
    """Base of every API type: snake_case in Python, camelCase on the wire.

    Unknown fields are ignored rather than refused: the API server has already pruned what its
    schema does not know, and an operator older than the CRD must still read newer objects.
    CEL rules are not mirrored in Python; the API server is the one place they are enforced,
    and a Python twin that drifted stricter would make stored objects unreadable.
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        extra="ignore",
    )

    def to_kube(self) -> dict[str, Any]:
        """The fields that were set, as the API server takes them: camelCase, JSON values."""
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True)


@dataclass(frozen=True)
class Rule:
    """One CEL rule the API server evaluates: an entry of `x-kubernetes-validations`.

    The message is what a user reads in kubectl, so it names the field and the rule. With
    `optional_old_self`, the rule also runs on create, where `oldSelf` is an empty optional
    (`oldSelf.hasValue()` is false): the way to write a rule for creation only.
    """

    rule: str
    message: str
    field_path: str | None = None
    reason: CelReason | None = None
    optional_old_self: bool = False

    def to_schema(self) -> JsonDict:
        entry: JsonDict = {"rule": self.rule, "message": self.message}
        if self.field_path is not None:
            entry["fieldPath"] = self.field_path
        if self.reason is not None:
            entry["reason"] = self.reason
        if self.optional_old_self:
            entry["optionalOldSelf"] = True
        return entry


def on_create(
    rule: str, message: str, *, field_path: str | None = None, reason: CelReason | None = None
) -> Rule:
    """A rule checked when the object is created and never again: an object stored before the
    rule existed can still be updated (its status, its finalizers) and deleted."""
    return Rule(
        rule=f"oldSelf.hasValue() || ({rule})",
        message=message,
        field_path=field_path,
        reason=reason,
        optional_old_self=True,
    )


@dataclass(frozen=True)
class KubeSchema:
    """Kubernetes schema extensions attached to a type, as `Annotated` metadata or model config.

    Keeping CEL rules and list semantics next to the field they govern makes the models the one
    source of truth; the CRD generator only copies these keys into the schema.
    """

    rules: tuple[Rule, ...] = ()
    list_type: Literal["atomic", "set", "map"] | None = None
    list_map_keys: tuple[str, ...] = ()

    def extensions(self) -> JsonDict:
        extra: JsonDict = {}
        if self.list_type is not None:
            extra["x-kubernetes-list-type"] = self.list_type
        if self.list_map_keys:
            extra["x-kubernetes-list-map-keys"] = list(self.list_map_keys)
        if self.rules:
            extra["x-kubernetes-validations"] = [rule.to_schema() for rule in self.rules]
        return extra

    def __get_pydantic_json_schema__(
        self, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        schema = handler(core_schema)
        target = handler.resolve_ref_schema(schema)
        for key, value in self.extensions().items():
            if key == "x-kubernetes-validations":
                target.setdefault(key, []).extend(value)
            else:
                target[key] = value
        return schema


def cel(*rules: Rule) -> KubeSchema:
    """CEL rules on a field's type, for `Annotated[..., cel(Rule(...))]`."""
    return KubeSchema(rules=rules)


def rules_extra(*rules: Rule) -> JsonDict:
    """CEL rules on a whole model, for `ConfigDict(json_schema_extra=rules_extra(...))`."""
    return KubeSchema(rules=rules).extensions()


def immutable(field_path: str, why: str) -> Rule:
    """A transition rule on a required field: once created, its value never changes."""
    return Rule(rule="self == oldSelf", message=f"{field_path} is immutable: {why}")


def immutable_optional(parent_path: str, name: str, why: str) -> Rule:
    """A transition rule, on the parent object, for an optional field that never changes.

    It sits on the parent because a rule on the field itself cannot see the field being added
    or removed: the field's own rule only runs when both the old and the new value exist.
    """
    return Rule(
        rule=(
            f"has(self.{name}) == has(oldSelf.{name})"
            f" && (!has(self.{name}) || self.{name} == oldSelf.{name})"
        ),
        message=f"{parent_path}.{name} is immutable: {why}",
        field_path=f".{name}",
        reason="FieldValueForbidden",
    )


def https_url(field_path: str, example: str) -> Rule:
    """The value is an absolute https URL (Kubernetes CEL's URL library parses it)."""
    return Rule(
        rule="isURL(self) && url(self).getScheme() == 'https'",
        message=f"{field_path} must be an absolute https URL, such as {example}",
    )


def plain_url(field_path: str, *, query: bool) -> tuple[Rule, ...]:
    """What an https URL the operator fetches from must not hide: a host that only looks like
    another (non-ASCII, or percent-encoded), credentials, and, for an issuer, a query or
    fragment.

    isURL admits all of these; each has a rule of its own so the message says which it is.
    """
    rules = [
        Rule(
            rule="self.matches('^[!-~]+$')",
            message=(
                f"{field_path} must be printable ASCII without spaces: write an international"
                " host name in its xn-- form, so that a look-alike of another host cannot pass"
                " for it"
            ),
        ),
        Rule(
            # isURL decodes %XX in the host, so t%D0%BEken.example is the Cyrillic look-alike
            # the ASCII rule refuses, written in ASCII. No DNS name needs a '%'.
            rule="!self.matches('^[^/?#]*//[^/?#]*%')",
            message=(
                f"{field_path} must not percent-encode its host ('%' before the path): a"
                " percent-encoded host can be a look-alike of another host; write an"
                " international host name in its xn-- form"
            ),
        ),
        Rule(
            rule="!self.matches('^[^/?#]*//[^/?#]*@')",
            message=(
                f"{field_path} must not carry user info (user:password@ before the host):"
                " kube-iam sends no credentials to an issuer"
            ),
        ),
    ]
    if not query:
        rules.append(
            Rule(
                rule="!self.contains('?') && !self.contains('#')",
                message=(
                    f"{field_path} must have no query or fragment: OpenID Connect Discovery"
                    " forbids them in an issuer, and tokens carry it without them"
                ),
            )
        )
    return tuple(rules)


# The seed's account id rule, applied at the root to the object's own metadata.name.
ACCOUNT_NAME_RULE = Rule(
    rule=(
        f"size(self.metadata.name) <= {ACCOUNT_NAME_MAX_LENGTH}"
        f" && self.metadata.name.matches(r'{ACCOUNT_NAME_PATTERN}')"
    ),
    message=(
        f"metadata.name must be 1 to {ACCOUNT_NAME_MAX_LENGTH} characters of lowercase"
        " letters, digits and '-', start with a letter and end with a letter or digit"
        f" ({ACCOUNT_NAME_PATTERN})"
    ),
    field_path=".metadata.name",
    reason="FieldValueInvalid",
)

# Field types. Length limits on strings and lists are also what keeps the CEL rules that touch
# them within the API server's cost budget.

AccountName = Annotated[
    str,
    StringConstraints(
        min_length=1, max_length=ACCOUNT_NAME_MAX_LENGTH, pattern=ACCOUNT_NAME_PATTERN
    ),
]
DnsSubdomain = Annotated[
    str, StringConstraints(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)
]
DisplayName = Annotated[str, StringConstraints(min_length=1, max_length=255)]
Description = Annotated[str, StringConstraints(max_length=1024)]
RoleSlug = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=ROLE_SLUG_PATTERN)
]
RoleList = Annotated[list[RoleSlug], Field(max_length=64), KubeSchema(list_type="set")]
SourceCidr = Annotated[
    str,
    StringConstraints(min_length=1, max_length=64),
    cel(
        Rule(
            rule="isCIDR(self)",
            message=(
                "allowSourceCidrs entries must be IPv4 or IPv6 CIDR blocks,"
                " such as 10.0.0.0/8 or 2001:db8::/32"
            ),
        )
    ),
]
SourceCidrList = Annotated[list[SourceCidr], Field(max_length=64), KubeSchema(list_type="set")]
ObjectName = Annotated[str, StringConstraints(min_length=1, max_length=253)]


class Condition(ApiModel):
    """One aspect of the object's state, as the Kubernetes API conventions define conditions."""

    type: str = Field(
        max_length=316,
        pattern=(
            r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
            r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"
        ),
        description=(
            "The kind of condition, in CamelCase. Ready says whether the object does its job;"
            " `kubectl wait --for=condition=Ready` waits for it."
        ),
    )
    status: Literal["True", "False", "Unknown"] = Field(
        description="Whether the condition holds: True, False or Unknown."
    )
    observed_generation: int | None = Field(
        default=None,
        ge=0,
        description=(
            "The metadata.generation the condition was computed from. When it is lower than the"
            " object's generation, the condition is out of date."
        ),
    )
    last_transition_time: datetime.datetime = Field(
        description="When status last changed from one value to another (RFC 3339)."
    )
    reason: str = Field(
        min_length=1,
        max_length=1024,
        pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
        description=(
            "Why the condition has its status, as one CamelCase word a program can match on,"
            " such as LimitExceeded or SecretConflict."
        ),
    )
    message: str = Field(
        max_length=32768,
        description="Why the condition has its status, as a sentence for a person.",
    )


ConditionList = Annotated[
    list[Condition],
    Field(max_length=32),
    KubeSchema(list_type="map", list_map_keys=("type",)),
]


class ObjectStatus(ApiModel):
    """Status fields every kind has."""

    observed_generation: int | None = Field(
        default=None,
        ge=0,
        description=(
            "The metadata.generation of the spec the operator last acted on. When it is lower"
            " than metadata.generation, the status does not yet reflect the latest change."
        ),
    )
    conditions: ConditionList | None = Field(
        default=None,
        description=(
            "The current state as Kubernetes conditions, one per type. Ready is True when the"
            " object does its job, and its reason and message say why not otherwise."
        ),
    )
    created_by: str | None = Field(
        default=None,
        max_length=1024,
        description=(
            "The user who created the object, as the API server authenticated them at"
            " admission. Set once."
        ),
    )


class ObjectMeta(ApiModel):
    """The standard object metadata; only the fields kube-iam reads are typed."""

    model_config = ConfigDict(extra="allow")

    name: str | None = Field(
        default=None,
        max_length=253,
        description="The object's name, unique among objects of its kind in the namespace.",
    )
    generate_name: str | None = Field(
        default=None,
        description=(
            "A prefix from which the API server generates a unique name when name is not given."
        ),
    )
    namespace: str | None = None
    uid: str | None = None
    generation: int | None = None
    resource_version: str | None = None
    creation_timestamp: datetime.datetime | None = None
    deletion_timestamp: datetime.datetime | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None


@dataclass(frozen=True)
class PrinterColumn:
    """A column of `kubectl get`."""

    name: str
    json_path: str
    type: Literal["string", "integer", "number", "boolean", "date"]
    description: str
    priority: int = 0

    def to_crd(self) -> dict[str, Any]:
        column: dict[str, Any] = {
            "name": self.name,
            "type": self.type,
            "jsonPath": self.json_path,
            "description": self.description,
        }
        if self.priority:
            column["priority"] = self.priority
        return column


READY_COLUMN = PrinterColumn(
    name="Ready",
    json_path='.status.conditions[?(@.type=="Ready")].status',
    type="string",
    description="Whether the Ready condition is True.",
)
AGE_COLUMN = PrinterColumn(
    name="Age",
    json_path=".metadata.creationTimestamp",
    type="date",
    description="How long ago the object was created.",
)


@dataclass(frozen=True)
class ResourceNames:
    """How a kind is named and listed: the CRD's names block and printer columns."""

    kind: str
    plural: str
    short_names: tuple[str, ...]
    printer_columns: tuple[PrinterColumn, ...]
    categories: tuple[str, ...] = (CATEGORY,)


class Resource(ApiModel):
    """A whole object of one of kube-iam's kinds: the envelope every Kubernetes object has."""

    names: ClassVar[ResourceNames]

    api_version: str = Field(
        default=API_VERSION,
        description=(
            "The versioned schema of this representation of the object; the API server"
            " converts recognised values to its own."
        ),
    )
    kind: str = Field(
        description=(
            "The REST resource this object represents, in CamelCase. The API server infers it"
            " from the endpoint the client sends the request to."
        ),
    )
    metadata: ObjectMeta = Field(
        default_factory=ObjectMeta,
        description="Standard object metadata: name, namespace, labels and annotations.",
    )
