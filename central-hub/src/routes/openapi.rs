//! `GET /api/v1/openapi.json`: the OpenAPI description of the hub's HTTP API, generated with
//! `utoipa` from the handlers' `#[utoipa::path]` attributes and the `ToSchema` types they
//! answer with — the same `Serialize` types that produce the bytes. What the attributes cannot
//! know is added by [`Amend`]: the report names and groups (from the report registry), every
//! report's line and total schemas, the error answers every `/api/v1` path shares, the bearer
//! scheme, and `/health` (served by `serve.rs`).

use serde_json::Value;
use utoipa::openapi::path::{HttpMethod, OperationBuilder, PathItem};
use utoipa::openapi::response::{ResponseBuilder, ResponsesBuilder};
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, Schema};
use utoipa::{Modify, OpenApi};

use crate::api::{conflicts, master_data, sites, work_orders};
use crate::http::error::ErrorDoc;
use crate::reports::genealogy::{Edge, GenealogyDoc, Node};
use crate::reports::handler;
use crate::reports::params::Group;
use crate::reports::registry::REPORTS;
use crate::reports::table::ReportDoc;

/// Every path the hub routes, as OpenAPI spells it.
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

#[derive(OpenApi)]
#[openapi(
    info(
        title = "MES central hub API",
        description = "HQ API of the central hub: sites and sync status, work-order releases, master data, cross-site reports. See docs/reports.md and docs/hub.md."
    ),
    paths(
        sites::sites,
        work_orders::release,
        work_orders::list_work_orders,
        work_orders::edit,
        conflicts::conflicts,
        master_data::put_master_data,
        handler::report,
        handler::genealogy,
        serve_document,
    ),
    components(schemas(ErrorDoc, ReportDoc, GenealogyDoc, Node, Edge)),
    security(("bearer" = [])),
    modifiers(&Amend)
)]
struct ApiDoc;

/// `GET /api/v1/openapi.json`
#[utoipa::path(get, path = "/api/v1/openapi.json", summary = "this document", security(()),
    responses((status = 200, description = "OpenAPI 3.1")))]
pub async fn serve_document() -> axum::Json<Value> {
    axum::Json(document())
}

/// The document as JSON.
pub fn document() -> Value {
    serde_json::to_value(ApiDoc::openapi()).unwrap_or(Value::Null)
}

struct Amend;

fn string_enum(values: Vec<&'static str>) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(values))
}

fn error_response(description: &str) -> RefOr<utoipa::openapi::Response> {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Error")))
                .build(),
        )
        .build()
        .into()
}

impl Modify for Amend {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "central-hub api-token create --scope hq:read|hq:write [--site SITE]",
                    ))
                    .build(),
            ),
        );
        for report in REPORTS {
            for (name, schema) in report.schemas() {
                components.schemas.insert(name, schema);
            }
        }
        let reports: Vec<&'static str> = REPORTS.iter().map(|r| r.name()).collect();
        let groups: Vec<&'static str> = Group::ALL.iter().map(|g| g.as_str()).collect();
        for (path, item) in doc.paths.paths.iter_mut() {
            if !path.starts_with("/api/v1/") || path == "/api/v1/openapi.json" {
                continue;
            }
            for op in [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                for (status, what) in [
                    ("400", "a bad parameter"),
                    ("401", "no token, or an unknown or revoked one"),
                    ("403", "the token's scope does not allow this"),
                    ("404", "not found"),
                    ("429", "rate limited; see Retry-After"),
                    (
                        "503",
                        "unavailable: no reporting database, a report timeout, or an internal error (with its id)",
                    ),
                ] {
                    op.responses
                        .responses
                        .entry(status.to_owned())
                        .or_insert_with(|| error_response(what));
                }
                for p in op.parameters.iter_mut().flatten() {
                    let schema: Option<Schema> = match (path.as_str(), p.name.as_str()) {
                        ("/api/v1/reports/{report}", "report") => {
                            Some(string_enum(reports.clone()).into())
                        }
                        ("/api/v1/reports/{report}", "group_by") => Some(
                            ArrayBuilder::new()
                                .items(string_enum(groups.clone()))
                                .into(),
                        ),
                        _ => None,
                    };
                    if let Some(s) = schema {
                        p.schema = Some(RefOr::T(s));
                    }
                }
            }
        }
        let health = OperationBuilder::new()
            .summary(Some("liveness"))
            .security(utoipa::openapi::security::SecurityRequirement::default())
            .responses(
                ResponsesBuilder::new()
                    .response("200", ResponseBuilder::new().description("ok"))
                    .build(),
            )
            .build();
        doc.paths
            .paths
            .insert("/health".to_owned(), PathItem::new(HttpMethod::Get, health));
    }
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

    #[test]
    fn schemas_come_from_the_answer_types_and_the_registry() {
        let doc = document();
        let schemas = &doc["components"]["schemas"];
        // The answer types, with their fields.
        assert!(
            schemas["Sites"]["properties"]["sites"].is_object(),
            "{schemas}"
        );
        assert!(schemas["Site"]["properties"]["lag_seconds"].is_object());
        assert!(schemas["Error"]["properties"]["error"].is_object());
        assert!(schemas["ErrorBody"]["properties"]["id"].is_object());
        // Every report's line, named after its type, with every column.
        for r in REPORTS {
            let (name, _) = &r.schemas()[0];
            for c in r.measure_columns() {
                assert!(
                    schemas[name]["properties"][&c].is_object(),
                    "{}: {name}.{c} missing",
                    r.name()
                );
            }
        }
        let report = &doc["paths"]["/api/v1/reports/{report}"]["get"];
        let names = report["parameters"][0]["schema"]["enum"].to_string();
        for r in REPORTS {
            assert!(names.contains(r.name()), "{names}");
        }
        assert!(report["responses"]["429"].is_object());
        assert!(doc["paths"]["/api/v1/openapi.json"]["get"]["responses"]["429"].is_null());
    }
}
