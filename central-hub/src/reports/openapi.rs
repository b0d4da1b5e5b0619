//! `GET /api/v1/openapi.json`: an OpenAPI 3.0 description of the hub's HTTP API, written by
//! hand next to the handlers (a test checks every routed path is described).

use serde_json::{Value, json};

use super::params::Group;

/// Every `/api/v1` path the hub routes, as OpenAPI spells it.
pub const PATHS: [&str; 10] = [
    "/api/v1/sites",
    "/api/v1/sites/{site}/work-orders",
    "/api/v1/work-orders",
    "/api/v1/work-orders/{id}",
    "/api/v1/conflicts",
    "/api/v1/master-data/{kind}",
    "/api/v1/reports/{report}",
    "/api/v1/reports/genealogy/{lot}",
    "/api/v1/openapi.json",
    "/health",
];

fn error_responses() -> Value {
    let err = json!({"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    json!({
        "400": err, "401": err, "403": err, "404": err,
        "429": {"description": "rate limited; see Retry-After", "headers": {"Retry-After": {"schema": {"type": "integer"}}},
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
        "503": err
    })
}

fn with_errors(ok: Value) -> Value {
    let mut r = error_responses();
    r["200"] = ok;
    r
}

fn param(name: &str, location: &str, required: bool, schema: Value, description: &str) -> Value {
    json!({"name": name, "in": location, "required": required, "schema": schema, "description": description})
}

pub fn document() -> Value {
    let reports: Vec<&str> = super::registry::REPORTS.iter().map(|r| r.name()).collect();
    let groups: Vec<&str> = Group::ALL.iter().map(|g| g.as_str()).collect();
    let table = json!({"description": "a report table (JSON) or its rows as CSV", "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/Report"}},
        "text/csv": {"schema": {"type": "string"}}}});
    let range_params = vec![
        param(
            "from",
            "query",
            false,
            json!({"type": "string"}),
            "RFC 3339 instant or YYYY-MM-DD (local midnight of each site); default to − 7 days",
        ),
        param(
            "to",
            "query",
            false,
            json!({"type": "string"}),
            "RFC 3339 instant or YYYY-MM-DD, exclusive; default now; at most 400 days after from",
        ),
        param(
            "site",
            "query",
            false,
            json!({"type": "array", "items": {"type": "string"}}),
            "repeatable or comma-separated; default every site the token may see",
        ),
        param(
            "group_by",
            "query",
            false,
            json!({"type": "array", "items": {"type": "string", "enum": groups}}),
            "repeatable or comma-separated",
        ),
        param(
            "format",
            "query",
            false,
            json!({"type": "string", "enum": ["json", "csv"]}),
            "or Accept: text/csv",
        ),
        param(
            "include_planned",
            "query",
            false,
            json!({"type": "boolean"}),
            "downtime-pareto: keep planned stops",
        ),
    ];
    let mut report_params = vec![param(
        "report",
        "path",
        true,
        json!({"type": "string", "enum": reports}),
        "which report",
    )];
    report_params.extend(range_params);
    json!({
        "openapi": "3.0.3",
        "info": {"title": "MES central hub API", "version": env!("CARGO_PKG_VERSION"),
                 "description": "HQ API of the central hub: sites and sync status, work-order releases, master data, cross-site reports. See docs/reports.md and docs/hub.md."},
        "security": [{"bearer": []}],
        "paths": {
            "/health": {"get": {"summary": "liveness", "security": [], "responses": {"200": {"description": "ok"}}}},
            "/api/v1/openapi.json": {"get": {"summary": "this document", "security": [], "responses": {"200": {"description": "OpenAPI 3.0"}}}},
            "/api/v1/sites": {"get": {"summary": "sites with per-site sync status (connected, last seen, backlog, lag)",
                "responses": with_errors(json!({"description": "sites", "content": {"application/json": {"schema": {"type": "object"}}}}))}},
            "/api/v1/sites/{site}/work-orders": {"post": {"summary": "release a work order to a site (hq:write)",
                "parameters": [param("site", "path", true, json!({"type": "string"}), "site id")],
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object",
                    "required": ["material", "planned_quantity"],
                    "properties": {"id": {"type": "string"}, "material": {"type": "string"}, "planned_quantity": {"type": "integer"},
                                   "due": {"type": "string", "format": "date-time"}, "priority": {"type": "integer"},
                                   "erp_ref": {"type": "string"}, "notes": {"type": "string"}, "routing_version": {"type": "integer"}}}}}},
                "responses": with_errors(json!({"description": "released"}))}},
            "/api/v1/work-orders": {"get": {"summary": "work orders with due dates and an at-risk flag",
                "parameters": [param("site", "query", false, json!({"type": "array", "items": {"type": "string"}}), "repeatable"),
                               param("state", "query", false, json!({"type": "string", "enum": ["open", "all"]}), "default open"),
                               param("limit", "query", false, json!({"type": "integer", "maximum": 1000}), "default 100")],
                "responses": with_errors(json!({"description": "work orders"}))}},
            "/api/v1/work-orders/{id}": {"patch": {"summary": "HQ edit or cancel of a work order (hq:write)",
                "parameters": [param("id", "path", true, json!({"type": "string"}), "work order id")],
                "responses": with_errors(json!({"description": "edited"}))}},
            "/api/v1/conflicts": {"get": {"summary": "open merge conflicts", "responses": with_errors(json!({"description": "conflicts"}))}},
            "/api/v1/master-data/{kind}": {"put": {"summary": "upload master data of one kind (hq:write, HQ-wide token)",
                "parameters": [param("kind", "path", true, json!({"type": "string", "enum": ["materials", "routings", "reason-codes", "equipment", "shift-calendars"]}), "kind")],
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "array", "items": {"type": "object"}}}}},
                "responses": with_errors(json!({"description": "stored and sent down"}))}},
            "/api/v1/reports/{report}": {"get": {"summary": "a cross-site KPI report (docs/reports.md)",
                "parameters": report_params, "responses": with_errors(table)}},
            "/api/v1/reports/genealogy/{lot}": {"get": {"summary": "lot genealogy, backward or forward, across sites",
                "parameters": [param("lot", "path", true, json!({"type": "string"}), "lot id"),
                               param("direction", "query", false, json!({"type": "string", "enum": ["backward", "forward"]}), "default backward"),
                               param("format", "query", false, json!({"type": "string", "enum": ["json", "csv"]}), "or Accept: text/csv")],
                "responses": with_errors(json!({"description": "nodes and edges", "content": {"application/json": {"schema": {"type": "object"}}, "text/csv": {"schema": {"type": "string"}}}}))}}
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "central-hub api-token create --scope hq:read|hq:write [--site SITE]"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "object",
                    "required": ["code", "message"], "properties": {"code": {"type": "string"}, "message": {"type": "string"}, "field": {"type": "string"}}}}},
                "Report": {"type": "object", "required": ["report", "from", "to", "sites", "group_by", "columns", "rows", "total"],
                    "properties": {"report": {"type": "string"}, "from": {"type": "string"}, "to": {"type": "string"},
                                   "sites": {"type": "array", "items": {"type": "string"}},
                                   "group_by": {"type": "array", "items": {"type": "string"}},
                                   "columns": {"type": "array", "items": {"type": "string"}},
                                   "rows": {"type": "array", "items": {"type": "object"}},
                                   "total": {"type": "object"}, "generated_at": {"type": "string"}}}
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_routed_path_is_described() {
        let doc = document();
        for p in PATHS {
            assert!(
                doc["paths"].get(p).is_some(),
                "{p} is missing from openapi.json"
            );
        }
    }
}
