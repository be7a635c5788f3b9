//! `pulse.payments.v1.PaymentService`: customers' credit and orders' payments.

use chrono::{DateTime, Utc};
use contracts::payments::v1::{
    CustomerCredit, GetCustomerCreditRequest, GetCustomerCreditResponse, GetPaymentRequest, GetPaymentResponse,
    Payment, PaymentStatus, SetCustomerCreditRequest, SetCustomerCreditResponse,
    payment_service_server::PaymentService,
};
use platform::values::{Currency, CustomerId};
use sqlx::PgPool;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::{
    db::{self, Credit, PaymentRow},
    error::{FieldViolation, PaymentsError},
    money::{self, DefaultCredit, format_minor},
};

pub(crate) struct PaymentApi {
    pool: PgPool,
    default_credit: DefaultCredit,
}

impl PaymentApi {
    pub(crate) fn new(pool: PgPool, default_credit: DefaultCredit) -> Self {
        Self { pool, default_credit }
    }
}

#[tonic::async_trait]
impl PaymentService for PaymentApi {
    async fn set_customer_credit(
        &self,
        request: Request<SetCustomerCreditRequest>,
    ) -> Result<Response<SetCustomerCreditResponse>, Status> {
        let body = request.into_inner();
        let credit = self.set(&body).await.map_err(Status::from)?;
        Ok(Response::new(SetCustomerCreditResponse { credit: Some(credit) }))
    }

    async fn get_customer_credit(
        &self,
        request: Request<GetCustomerCreditRequest>,
    ) -> Result<Response<GetCustomerCreditResponse>, Status> {
        let body = request.into_inner();
        let credit = self.get_credit(&body).await.map_err(Status::from)?;
        Ok(Response::new(GetCustomerCreditResponse { credit: Some(credit) }))
    }

    async fn get_payment(&self, request: Request<GetPaymentRequest>) -> Result<Response<GetPaymentResponse>, Status> {
        let body = request.into_inner();
        let payment = self.get_payment(&body).await.map_err(Status::from)?;
        Ok(Response::new(GetPaymentResponse { payment: Some(payment) }))
    }
}

impl PaymentApi {
    async fn set(&self, body: &SetCustomerCreditRequest) -> Result<CustomerCredit, PaymentsError> {
        let mut violations = Vec::new();
        let (customer, currency) = parse_customer(&body.customer_id, &body.currency, &mut violations);
        let limit = money::parse_limit(&body.amount, currency)
            .map_err(|problem| violations.push(FieldViolation::new("amount", problem)))
            .ok();
        let (Some(customer), Some(currency), Some(limit), true) = (customer, currency, limit, violations.is_empty())
        else {
            return Err(PaymentsError::InvalidArgument(violations));
        };
        let mut conn = self.pool.acquire().await?;
        let credit = db::set_limit(&mut conn, customer.as_str(), currency.code(), limit).await?;
        tracing::info!(customer_id = customer.as_str(), currency = currency.code(), limit, "customer credit set");
        Ok(self.to_proto(&customer, currency, credit))
    }

    async fn get_credit(&self, body: &GetCustomerCreditRequest) -> Result<CustomerCredit, PaymentsError> {
        let mut violations = Vec::new();
        let (customer, currency) = parse_customer(&body.customer_id, &body.currency, &mut violations);
        let (Some(customer), Some(currency)) = (customer, currency) else {
            return Err(PaymentsError::InvalidArgument(violations));
        };
        let mut conn = self.pool.acquire().await?;
        let credit = db::credit(&mut conn, customer.as_str(), currency.code()).await?;
        Ok(self.to_proto(&customer, currency, credit))
    }

    async fn get_payment(&self, body: &GetPaymentRequest) -> Result<Payment, PaymentsError> {
        let order_id = Uuid::parse_str(body.order_id.trim()).map_err(|_| {
            PaymentsError::InvalidArgument(vec![FieldViolation::new(
                "order_id",
                format!("must be a UUID, got {:?}", body.order_id),
            )])
        })?;
        let mut conn = self.pool.acquire().await?;
        let row = db::payment(&mut conn, order_id, false).await?.ok_or(PaymentsError::NotFound)?;
        Ok(payment_to_proto(row))
    }

    fn to_proto(&self, customer: &CustomerId, currency: Currency, credit: Credit) -> CustomerCredit {
        let limit = credit.limit_minor.unwrap_or_else(|| self.default_credit.in_minor_units(currency));
        CustomerCredit {
            customer_id: customer.as_str().to_owned(),
            currency: currency.code().to_owned(),
            limit: format_minor(limit, currency),
            used: format_minor(credit.used_minor, currency),
        }
    }
}

/// The customer id and the currency of a request, each problem added to `violations`.
fn parse_customer(
    customer_id: &str,
    currency: &str,
    violations: &mut Vec<FieldViolation>,
) -> (Option<CustomerId>, Option<Currency>) {
    let customer =
        CustomerId::parse(customer_id).map_err(|p| violations.push(FieldViolation::new("customer_id", p))).ok();
    let currency = Currency::parse(currency).map_err(|p| violations.push(FieldViolation::new("currency", p))).ok();
    (customer, currency)
}

fn payment_to_proto(row: PaymentRow) -> Payment {
    let status = match row.status() {
        Some(db::Status::Captured) => PaymentStatus::Captured,
        Some(db::Status::Declined) => PaymentStatus::Declined,
        Some(db::Status::Refunded) => PaymentStatus::Refunded,
        None => PaymentStatus::Unspecified,
    };
    let currency = row.currency.as_deref().and_then(|code| Currency::parse(code).ok());
    let amount = match (row.amount_minor, currency) {
        (Some(minor), Some(currency)) => format_minor(minor, currency),
        _ => String::new(),
    };
    Payment {
        payment_id: row.payment_id.to_string(),
        order_id: row.order_id.to_string(),
        customer_id: row.customer_id.unwrap_or_default(),
        amount,
        currency: row.currency.unwrap_or_default(),
        status: status as i32,
        created_at: Some(timestamp(row.created_at)),
        updated_at: Some(timestamp(row.updated_at)),
    }
}

fn timestamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: at.timestamp(), nanos: at.timestamp_subsec_nanos() as i32 }
}
