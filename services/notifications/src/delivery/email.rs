//! Sending one email delivery through the SMTP server SMTP_URL.

use std::time::Duration;

use lettre::{
    AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor,
    message::{Mailbox, header::ContentType},
};
use secrecy::{ExposeSecret, SecretString};

use super::{Outcome, claim::Claimed};

pub(crate) struct EmailSender {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl EmailSender {
    pub(crate) fn new(smtp_url: &SecretString, from: &str, timeout: Duration) -> anyhow::Result<Self> {
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(smtp_url.expose_secret())
            .map_err(|err| anyhow::anyhow!("SMTP_URL is not an SMTP URL lettre accepts: {err}"))?
            .timeout(Some(timeout))
            .build();
        let from = from.parse().map_err(|err| anyhow::anyhow!("SMTP_FROM is not a mailbox: {err}"))?;
        Ok(Self { transport, from })
    }

    pub(crate) async fn send(&self, delivery: &Claimed, traceparent: &str) -> Outcome {
        let message = match self.message(delivery, traceparent) {
            Ok(message) => message,
            Err(err) => return Outcome::failed(None, format!("cannot build the mail: {err:#}")),
        };
        match self.transport.send(message).await {
            Ok(response) => Outcome::Delivered { status_code: reply_code(response.code()) },
            Err(err) => {
                let code = err.status().and_then(reply_code);
                let text = format!("SMTP: {err}");
                if err.is_permanent() { Outcome::failed(code, text) } else { Outcome::retry(code, text, None) }
            }
        }
    }

    /// The same Message-ID on every attempt, so a mail sent twice is recognisable as one.
    fn message(&self, delivery: &Claimed, traceparent: &str) -> anyhow::Result<Message> {
        let to: Mailbox = delivery.email_address.as_deref().unwrap_or_default().parse()?;
        let subject = format!("{}: order {}", delivery.event_type, delivery.order_id);
        Ok(Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(subject)
            .message_id(Some(format!("<{}@pulse>", delivery.delivery_id)))
            .header(ContentType::TEXT_PLAIN)
            .raw_header(lettre::message::header::HeaderValue::new(
                lettre::message::header::HeaderName::new_from_ascii_str("X-Correlation-Id"),
                delivery.correlation_id.clone(),
            ))
            .raw_header(lettre::message::header::HeaderValue::new(
                lettre::message::header::HeaderName::new_from_ascii_str("Traceparent"),
                traceparent.to_owned(),
            ))
            .body(format!("{}\n", delivery.message))?)
    }
}

fn reply_code(code: lettre::transport::smtp::response::Code) -> Option<u16> {
    code.to_string().parse().ok()
}
