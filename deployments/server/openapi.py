"""The server's OpenAPI 3.1 document (``GET /openapi.json``): both protocols, with the model's
columns and types from its signature, the bearer scheme and every 4xx answer.

The schemas state what the input contract (contract.py) accepts, no more and no less, where
JSON Schema can say it: every column given, numbers within ±(2**63 - 1), ``null`` only in
columns that take missing values. What JSON Schema cannot relate (a ``dataframe_split`` row's
values to its ``columns``, the rows of v2 tensors to each other) is documented in its single-row,
signature-ordered form; the descriptions say what more the server takes.
"""

from __future__ import annotations

import re
from typing import Any

from deployments.server.contract import INT64_MAX, INT64_MIN, NUMERIC_V2_DATATYPES
from deployments.server.model_runtime import ColumnSpec
from modelyard.catalog import PREDICTION_ID_HEADER

JsonSchema = dict[str, Any]
ERROR = {"$ref": "#/components/schemas/Error"}


def _value(column: ColumnSpec) -> JsonSchema:
    if column.numeric:
        schema: JsonSchema = {"type": ["number", "null"] if column.nullable else "number",
                              "minimum": INT64_MIN, "maximum": INT64_MAX}
    else:
        schema = {"type": ["string", "null"] if column.nullable else "string"}
    schema["description"] = f"{column.type}" + (" (null: a missing value)" if column.nullable else "")
    return schema


def _csv_pattern(columns: list[ColumnSpec], max_rows: int) -> str:
    number = r"-?(0|[1-9][0-9]{0,17})(\.[0-9]{1,6})?"
    fields = []
    for column in columns:
        if column.numeric:
            fields.append(f"({number})?" if column.nullable else number)
        else:
            fields.append(r"[A-Za-z0-9_. -]*")
    header = ",".join(re.escape(c.name) for c in columns)
    return rf"^{header}(\n{','.join(fields)})+\n?$"


def _responses(ok: JsonSchema, *codes: int, ok_description: str = "OK", ok_headers: dict | None = None,
               media: str = "application/json") -> dict[str, Any]:
    descriptions = {
        400: "The input breaks the contract; `field` names where.",
        401: "No valid bearer token.",
        403: "A replay header without the admin token.",
        404: "No such model or version on this server.",
        413: "The body is over the size limit.",
        415: "An unsupported content type.",
        503: "The model is still loading.",
    }
    request_id = {"X-Request-ID": {"description": "The client's request id, or the prediction id.",
                                   "schema": {"type": "string"}}}
    responses: dict[str, Any] = {"200": {"description": ok_description, "headers": {**request_id, **(ok_headers or {})},
                                         "content": {media: {"schema": ok}}}}
    for code in codes:
        content = ok if code == 503 else ERROR
        responses[str(code)] = {"description": descriptions[code], "headers": request_id,
                                "content": {"application/json": {"schema": content}}}
    return responses


def _obj(properties: dict[str, JsonSchema], required: list[str] | None = None) -> JsonSchema:
    return {"type": "object", "properties": properties, "required": required if required is not None else list(properties),
            "additionalProperties": False}


def openapi_document(columns: list[ColumnSpec], model: str, version: str, outputs: dict[str, JsonSchema],
                     max_rows: int, authenticated: bool) -> dict[str, Any]:
    """The document for a server of ``model`` ``version``; ``outputs`` are the v2 output tensors'
    data schemas by name (the first one is also what ``/invocations`` predicts)."""
    names = [c.name for c in columns]
    values = {c.name: _value(c) for c in columns}
    record = _obj(values)
    row = {"type": "array", "prefixItems": list(values.values()), "items": False,
           "minItems": len(columns), "maxItems": len(columns)}
    records = {"type": "array", "items": record, "minItems": 1, "maxItems": max_rows}
    rows = {"type": "array", "items": row, "minItems": 1, "maxItems": max_rows}
    split = _obj({"columns": {"const": names, "description": "The column names (any order in practice)."},
                  "data": rows, "index": {"type": "array", "description": "Ignored."}}, ["columns", "data"])
    params = {"type": "object", "description": "Ignored."}
    formats = {
        "dataframe_split": split, "dataframe_records": records,
        "instances": {"oneOf": [records, rows]}, "inputs": {"oneOf": [records, rows]},
    }
    mlflow_body = {
        "oneOf": [_obj({key: schema, "params": params}, [key]) for key, schema in formats.items()],
        "description": "One of the MLflow scoring formats. Every column is required; `instances` and `inputs` "
                       f"also take an object of columns ({{column: [values]}}, equal lengths). At most {max_rows} rows.",
    }
    first_output = next(iter(outputs))
    predictions = _obj({"predictions": {"type": "array", "items": outputs[first_output]}})

    tensors = []
    for column in columns:
        datatypes = sorted(NUMERIC_V2_DATATYPES) if column.numeric else ["BYTES"]
        tensors.append(_obj({
            "name": {"const": column.name}, "shape": {"const": [1]}, "datatype": {"enum": datatypes},
            "data": {"type": "array", "items": values[column.name], "minItems": 1, "maxItems": 1},
            "parameters": {"type": "object"},
        }, ["name", "shape", "datatype", "data"]))
    infer_request = {
        **_obj({
            "id": {"type": "string"}, "parameters": {"type": "object"},
            "inputs": {"type": "array", "prefixItems": tensors, "items": False,
                       "minItems": len(tensors), "maxItems": len(tensors)},
            "outputs": {"type": "array", "items": _obj({"name": {"enum": list(outputs)},
                                                        "parameters": {"type": "object"}}, ["name"])},
        }, ["inputs"]),
        "description": "One tensor per column. Shown for one row; the server takes up to "
                       f"{max_rows} rows: shape [rows] or [rows, 1], the same rows in every tensor.",
    }
    output_tensor = {"oneOf": [_obj({"name": {"const": name}, "datatype": {"type": "string"},
                                     "shape": {"type": "array", "items": {"type": "integer"}},
                                     "data": {"type": "array", "items": schema}}) for name, schema in outputs.items()]}
    infer_response = _obj({"model_name": {"const": model}, "model_version": {"const": version},
                           "id": {"type": "string"}, "outputs": {"type": "array", "items": output_tensor}},
                          ["model_name", "model_version", "outputs"])
    prediction_id = {PREDICTION_ID_HEADER: {"description": "The server's unique id of this prediction: labels "
                                                           "join on it.", "schema": {"type": "string"}}}
    metadata_tensor = _obj({"name": {"type": "string"}, "datatype": {"type": "string"},
                            "shape": {"type": "array", "items": {"type": "integer"}}})
    model_metadata = _obj({"name": {"const": model}, "versions": {"type": "array", "items": {"type": "string"}},
                           "platform": {"type": "string"}, "inputs": {"type": "array", "items": metadata_tensor},
                           "outputs": {"type": "array", "items": metadata_tensor}})
    security = [{"bearer": []}] if authenticated else []
    request_id_header = {"name": "X-Request-ID", "in": "header", "required": False,
                         "schema": {"type": "string", "pattern": "^[!-~]{1,128}$"},
                         "description": "Kept in the prediction log and echoed; the server makes one when absent."}
    model_parameters = [
        {"name": "model_name", "in": "path", "required": True, "schema": {"enum": [model]}},
    ]
    version_parameters = [*model_parameters,
                          {"name": "model_version", "in": "path", "required": True, "schema": {"enum": [version]}}]

    def protected(operation: dict[str, Any]) -> dict[str, Any]:
        if authenticated:
            operation["security"] = security
            operation["responses"]["401"] = {"description": "No valid bearer token.",
                                             "content": {"application/json": {"schema": ERROR}}}
        return operation

    def infer(parameters: list) -> dict[str, Any]:
        return protected({
            "summary": "Open Inference Protocol v2 inference", "parameters": [*parameters, request_id_header],
            "requestBody": {"required": True, "content": {"application/json": {"schema": infer_request}}},
            "responses": _responses(infer_response, 400, 403, 404, 413, 415, ok_headers=prediction_id),
        })

    def ready(parameters: list) -> dict[str, Any]:
        schema = _obj({"name": {"const": model}, "ready": {"type": "boolean"}})
        return {"summary": "Whether the model is ready", "parameters": parameters, "security": [],
                "responses": _responses(schema, 400, 404, 503)}

    def metadata(parameters: list) -> dict[str, Any]:
        return protected({"summary": "Model metadata (v2)", "parameters": parameters,
                          "responses": _responses(model_metadata, 400, 404)})

    health = _obj({"status": {"enum": ["ok", "loading"]}})
    paths: dict[str, Any] = {
        "/invocations": {"post": protected({
            "summary": "MLflow scoring protocol", "parameters": [request_id_header],
            "requestBody": {"required": True, "content": {
                "application/json": {"schema": mlflow_body},
                "text/csv": {"schema": {"type": "string", "pattern": _csv_pattern(columns, max_rows),
                                        "description": "A header of the column names, then one line per row "
                                                       "(any CSV the csv module reads, in practice)."}},
            }},
            "responses": _responses(predictions, 400, 403, 413, 415, ok_headers=prediction_id),
        })},
        "/ping": {"get": {"summary": "Health", "security": [], "responses": _responses(health, 503)}},
        "/health": {"get": {"summary": "Health", "security": [], "responses": _responses(health, 503)}},
        "/v2/health/live": {"get": {"summary": "Liveness (v2)", "security": [],
                                    "responses": _responses(_obj({"live": {"const": True}}))}},
        "/v2/health/ready": {"get": {"summary": "Readiness (v2)", "security": [],
                                     "responses": _responses(_obj({"ready": {"type": "boolean"}}), 503)}},
        "/v2": {"get": protected({"summary": "Server metadata (v2)", "responses": _responses(_obj({
            "name": {"type": "string"}, "version": {"type": "string"},
            "extensions": {"type": "array", "items": {"type": "string"}}}))})},
        "/version": {"get": protected({"summary": "The version this server serves", "responses": _responses(_obj({
            "model": {"const": model}, "version": {"const": version}, "run_id": {"type": "string"},
            "artifact_sha256": {"type": "string"}, "serving_format": {"enum": ["onnx", "pyfunc"]},
            "signer": {"type": ["string", "null"], "description": "sha256 of the verifying public key's DER"}}))})},
        "/metrics": {"get": protected({"summary": "Prometheus metrics",
                                       "responses": _responses({"type": "string"}, media="text/plain")})},
        "/v2/models/{model_name}": {"get": metadata(model_parameters)},
        "/v2/models/{model_name}/versions/{model_version}": {"get": metadata(version_parameters)},
        "/v2/models/{model_name}/ready": {"get": ready(model_parameters)},
        "/v2/models/{model_name}/versions/{model_version}/ready": {"get": ready(version_parameters)},
        "/v2/models/{model_name}/infer": {"post": infer(model_parameters)},
        "/v2/models/{model_name}/versions/{model_version}/infer": {"post": infer(version_parameters)},
    }
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": f"modelyard: {model} v{version}", "version": version,
                 "description": "One model version over the MLflow scoring protocol and the Open Inference "
                                "Protocol v2. Client input never causes a 5xx."},
        "paths": paths,
        "components": {"schemas": {"Error": _obj({"error_code": {"type": "string"}, "message": {"type": "string"},
                                                  "field": {"type": "string"}}, ["error_code", "message"])}},
    }
    if authenticated:
        document["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        document["security"] = security
    return document
