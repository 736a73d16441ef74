//! The SSE transport (`GET /sse`) on the wire, for the black-box tests: a small
//! Server-Sent Events reader over reqwest's body chunks (the framing is four line kinds, not
//! worth a dependency), and the v1 frames the events carry ([`super::v1::parse`]).

use std::time::Duration;

use anyhow::{Context, bail};
use tokio::time::timeout;

use super::WAIT;
use super::v1::{Frame, parse};

/// One event: its name, its data (lines joined with `\n`), and its id if it had one.
#[derive(Debug, Clone)]
pub struct Event {
    pub event: String,
    pub data: String,
    pub id: Option<String>,
}

impl Event {
    /// The v1 frame in the data.
    pub fn frame(&self) -> Frame {
        parse(&self.data)
    }
}

/// An open event stream.
pub struct Stream {
    /// The answer's headers.
    pub headers: reqwest::header::HeaderMap,
    response: reqwest::Response,
    buffer: String,
    /// The id of the last event that had one: what `EventSource` would send back as
    /// `Last-Event-ID`.
    pub last_id: Option<String>,
    /// Heartbeat comments seen.
    pub comments: usize,
}

/// A client for streams: no overall timeout (a stream lasts as long as the test wants).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(WAIT)
        .pool_max_idle_per_host(0)
        .build()
        .expect("http client")
}

/// Sends `request` and checks that it answers an event stream.
pub async fn open(request: reqwest::RequestBuilder) -> anyhow::Result<Stream> {
    let response = timeout(WAIT, request.send())
        .await
        .context("answer in time")??;
    let status = response.status();
    let kind = response.headers().get("content-type").cloned();
    if status != 200 || kind.as_ref().is_none_or(|k| k != "text/event-stream") {
        let body = response.text().await.unwrap_or_default();
        bail!("not an event stream: {status} {kind:?} {body}");
    }
    Ok(Stream {
        headers: response.headers().clone(),
        response,
        buffer: String::new(),
        last_id: None,
        comments: 0,
    })
}

/// `GET {base}/sse?user={user}&channels={channels}` (open mode), with `Last-Event-ID` if
/// given; the stream and the node named in its `connected` event.
pub async fn open_as(
    base: &str,
    user: &str,
    channels: &str,
    last_id: Option<&str>,
) -> anyhow::Result<(Stream, String)> {
    let mut request = client().get(format!("{base}/sse?user={user}&channels={channels}"));
    if let Some(id) = last_id {
        request = request.header("last-event-id", id);
    }
    let mut stream = open(request).await?;
    match stream.next_within(WAIT).await?.map(|e| e.frame()) {
        Some(Frame::Connected { node }) => Ok((stream, node)),
        other => bail!("expected connected, got {other:?}"),
    }
}

impl Stream {
    /// The next event, `None` at the end of the stream; heartbeat comments are counted and
    /// skipped.
    pub async fn next(&mut self) -> anyhow::Result<Option<Event>> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                if let Some(event) = self.block(&block) {
                    return Ok(Some(event));
                }
                continue;
            }
            match self.response.chunk().await? {
                Some(bytes) => self.buffer.push_str(std::str::from_utf8(&bytes)?),
                None => return Ok(None),
            }
        }
    }

    /// [`Stream::next`], failing after `within`.
    pub async fn next_within(&mut self, within: Duration) -> anyhow::Result<Option<Event>> {
        timeout(within, self.next())
            .await
            .context("an event in time")?
    }

    /// The next event's v1 frame; fails at the end of the stream or after [`WAIT`].
    pub async fn next_frame(&mut self) -> anyhow::Result<Frame> {
        match self.next_within(WAIT).await? {
            Some(event) => Ok(event.frame()),
            None => bail!("the stream ended"),
        }
    }

    fn block(&mut self, block: &str) -> Option<Event> {
        let (mut event, mut data, mut id) = (String::from("message"), Vec::new(), None);
        let mut fields = 0;
        for line in block.lines() {
            if line.starts_with(':') {
                self.comments += 1;
                continue;
            }
            let (name, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value).to_owned();
            fields += 1;
            match name {
                "event" => event = value,
                "data" => data.push(value),
                "id" => id = Some(value),
                _ => {}
            }
        }
        if let Some(id) = &id {
            self.last_id = Some(id.clone());
        }
        (fields > 0 && !data.is_empty()).then(|| Event {
            event,
            data: data.join("\n"),
            id,
        })
    }
}
