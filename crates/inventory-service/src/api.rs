//! The catalog's HTTP API: put a product (create or replace), read one, list all. Bodies are parsed
//! by hand so that a 422 lists every invalid field at once.

use crate::domain::{MAX_NAME_CHARS, MAX_PRICE_CENTS, MAX_STOCK, Product, ProductDraft};
use crate::storage;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use contracts::{Money, ProductId};
use platform::access::Admin;
use platform::db::{Db, now_us};
use platform::http::{ApiError, FieldError, JsonBody, Problem};
use serde_json::Value;
use utoipa::OpenApi;

/// The fields a product body may carry; anything else is refused, so a typo never goes unnoticed.
const PRODUCT_FIELDS: [&str; 3] = ["name", "price_cents", "stock"];

#[derive(Clone)]
struct ApiState {
    db: Db,
}

/// The service's routes; `ServiceContext::serve` adds health, metrics and the correlation layer.
pub fn router(db: Db) -> Router {
    Router::new()
        .route("/products", get(list_products))
        .route("/products/{product_id}", get(get_product).put(put_product))
        .with_state(ApiState { db })
}

#[derive(OpenApi)]
#[openapi(
    paths(list_products, get_product, put_product),
    components(schemas(Product, ProductDraft)),
    tags((name = "catalog", description = "Products, their prices and their stock."))
)]
struct CatalogApi;

/// The service's OpenAPI document, served at `/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut document = platform::http::api_document(
        "inventory-service",
        "The catalog and its stock. Orders reserve stock through events, all or nothing; this API \
         puts products and shows what is available, reserved and sold.",
        CatalogApi::openapi(),
    );
    platform::http::refuse_unknown_fields(&mut document, &["ProductDraft"]);
    platform::access::document_admin_security(&mut document);
    document
}

/// Create a product, or replace its name, price and available stock.
#[utoipa::path(put, path = "/products/{product_id}", tag = "catalog",
    params(("product_id" = ProductId, Path, description = "The product's SKU.")),
    request_body = ProductDraft,
    security(("bearerAuth" = [])),
    responses(
        (status = 200, description = "The product was replaced.", body = Product),
        (status = 201, description = "The product was created.", body = Product,
            headers(("Location" = String, description = "The product's URL."))),
        (status = 400, description = "The body is not valid JSON.", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No admin token (`Authorization: Bearer <ORDERFLOW_ADMIN_TOKEN>`); nothing changed.", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A wrong admin token, or a server started without one; nothing changed.", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is larger than 64 KiB.", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not JSON.", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields, all of them listed (the SKU in the path included).", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The database does not answer; retry.", body = Problem, content_type = "application/problem+json"),
    ))]
async fn put_product(
    _admin: Admin,
    State(state): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let Path(raw_id) = path.map_err(|rejection| ApiError::BadRequest(rejection.body_text()))?;
    let (product_id, draft) = parse_product(&raw_id, &body).map_err(ApiError::Validation)?;
    let (product, created) = storage::put_product(&state.db, &product_id, &draft, now_us())
        .await
        .map_err(ApiError::database)?;
    tracing::info!(product_id = %product_id, created, available = product.available, "product saved");
    Ok(if created {
        (
            StatusCode::CREATED,
            [(header::LOCATION, format!("/products/{product_id}"))],
            Json(product),
        )
            .into_response()
    } else {
        (StatusCode::OK, Json(product)).into_response()
    })
}

/// Show a product with its stock.
#[utoipa::path(get, path = "/products/{product_id}", tag = "catalog",
    params(("product_id" = ProductId, Path, description = "The product's SKU.")),
    responses(
        (status = 200, description = "The product.", body = Product),
        (status = 400, description = "Not a valid SKU.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such product.", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The database does not answer; retry.", body = Problem, content_type = "application/problem+json"),
    ))]
async fn get_product(
    State(state): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Product>, ApiError> {
    let Path(raw_id) = path.map_err(|rejection| ApiError::BadRequest(rejection.body_text()))?;
    let product_id =
        ProductId::parse(&raw_id).map_err(|error| ApiError::BadRequest(error.to_string()))?;
    storage::product(&state.db, &product_id)
        .await
        .map_err(ApiError::database)?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("no product '{product_id}'")))
}

/// Show every product with its stock.
#[utoipa::path(get, path = "/products", tag = "catalog",
    responses(
        (status = 200, description = "Every product, by SKU.", body = Vec<Product>),
        (status = 503, description = "The database does not answer; retry.", body = Problem, content_type = "application/problem+json"),
    ))]
async fn list_products(State(state): State<ApiState>) -> Result<Json<Vec<Product>>, ApiError> {
    storage::products(&state.db)
        .await
        .map(Json)
        .map_err(ApiError::database)
}

/// Turns the path id and the raw body into domain values, or lists every field that is wrong.
pub fn parse_product(
    raw_id: &str,
    body: &Value,
) -> Result<(ProductId, ProductDraft), Vec<FieldError>> {
    let mut errors = Vec::new();
    let product_id = match ProductId::parse(raw_id) {
        Ok(product_id) => Some(product_id),
        Err(error) => {
            errors.push(FieldError::new("product_id", error.to_string()));
            None
        }
    };
    let Some(fields) = body.as_object() else {
        errors.push(FieldError::new("body", "must be a JSON object"));
        return Err(errors);
    };

    let name = match fields.get("name") {
        None => required(&mut errors, "name"),
        Some(value) => match value.as_str() {
            Some(name) if (1..=MAX_NAME_CHARS).contains(&name.chars().count()) => {
                Some(name.to_owned())
            }
            _ => {
                errors.push(FieldError::new(
                    "name",
                    format!("must be a string of 1 to {MAX_NAME_CHARS} characters"),
                ));
                None
            }
        },
    };
    let price = integer(
        fields.get("price_cents"),
        "price_cents",
        MAX_PRICE_CENTS,
        &mut errors,
    )
    .and_then(|cents| Money::from_cents(cents).ok());
    let stock = integer(fields.get("stock"), "stock", MAX_STOCK, &mut errors);
    for key in fields.keys() {
        if !PRODUCT_FIELDS.contains(&key.as_str()) {
            errors.push(FieldError::new(key.as_str(), "unknown field"));
        }
    }

    match (product_id, name, price, stock) {
        (Some(product_id), Some(name), Some(price), Some(stock)) if errors.is_empty() => {
            Ok((product_id, ProductDraft { name, price, stock }))
        }
        _ => Err(errors),
    }
}

fn required<T>(errors: &mut Vec<FieldError>, field: &str) -> Option<T> {
    errors.push(FieldError::new(field, "is required"));
    None
}

/// A required JSON integer from 0 to `max` (`12.0` is not an integer here: it hints at a unit mix-up).
fn integer(
    value: Option<&Value>,
    field: &str,
    max: i64,
    errors: &mut Vec<FieldError>,
) -> Option<i64> {
    let Some(value) = value else {
        return required(errors, field);
    };
    match value.as_i64() {
        Some(n) if (0..=max).contains(&n) => Some(n),
        _ => {
            errors.push(FieldError::new(
                field,
                format!("must be an integer from 0 to {max}"),
            ));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(errors: &[FieldError]) -> Vec<&str> {
        errors.iter().map(|e| e.field.as_str()).collect()
    }

    #[test]
    fn the_documented_body_has_the_limits_the_parser_applies() {
        let document = serde_json::to_value(openapi()).unwrap();
        let draft = &document["components"]["schemas"]["ProductDraft"]["properties"];
        assert_eq!(draft["name"]["maxLength"], json!(MAX_NAME_CHARS));
        assert_eq!(draft["price_cents"]["maximum"], json!(MAX_PRICE_CENTS));
        assert_eq!(draft["stock"]["maximum"], json!(MAX_STOCK));
        let documented: Vec<&str> = draft
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut accepted = PRODUCT_FIELDS.to_vec();
        accepted.sort_unstable();
        assert_eq!(documented, accepted);
    }

    #[test]
    fn a_valid_body_becomes_a_draft() {
        let (id, draft) = parse_product(
            "sku-1",
            &json!({"name": "Widget", "price_cents": 1299, "stock": 10}),
        )
        .unwrap();
        assert_eq!(id.as_str(), "sku-1");
        assert_eq!(draft.name, "Widget");
        assert_eq!(draft.price.cents(), 1299);
        assert_eq!(draft.stock, 10);
    }

    #[test]
    fn limits_are_inclusive() {
        let body =
            json!({"name": "é".repeat(200), "price_cents": 100_000_000, "stock": 1_000_000_000});
        assert!(parse_product("a", &body).is_ok());
        let body = json!({"name": "x", "price_cents": 0, "stock": 0});
        assert!(parse_product("a", &body).is_ok());
    }

    #[test]
    fn every_bad_field_is_reported() {
        let errors = parse_product(
            "bad id",
            &json!({"name": "", "price_cents": -1, "stock": 1.5, "colour": "red"}),
        )
        .unwrap_err();
        assert_eq!(
            fields(&errors),
            ["product_id", "name", "price_cents", "stock", "colour"]
        );
        assert_eq!(errors[4].message, "unknown field");
    }

    #[test]
    fn missing_wrongly_typed_and_oversized_fields_are_errors() {
        let errors = parse_product("a", &json!({})).unwrap_err();
        assert_eq!(fields(&errors), ["name", "price_cents", "stock"]);
        assert!(errors.iter().all(|e| e.message == "is required"));

        let errors = parse_product(
            "a",
            &json!({"name": "x".repeat(201), "price_cents": "12", "stock": 1_000_000_001}),
        )
        .unwrap_err();
        assert_eq!(fields(&errors), ["name", "price_cents", "stock"]);

        let errors = parse_product(
            "a",
            &json!({"name": null, "price_cents": 100_000_001, "stock": null}),
        )
        .unwrap_err();
        assert_eq!(fields(&errors), ["name", "price_cents", "stock"]);
    }

    #[test]
    fn a_body_that_is_not_an_object_is_refused() {
        let errors = parse_product("a", &json!([1, 2])).unwrap_err();
        assert_eq!(fields(&errors), ["body"]);
    }

    proptest::proptest! {
        #[test]
        fn any_body_is_a_product_or_named_errors(
            id in "\\PC{0,70}",
            body in testkit::arbitrary::json_value(),
        ) {
            if let Err(errors) = parse_product(&id, &body) {
                proptest::prop_assert!(!errors.is_empty());
            }
        }
    }
}
