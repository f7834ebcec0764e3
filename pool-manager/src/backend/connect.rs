//! Connections to one instance's runtime, whatever its address: each instance gets
//! its own HTTP client whose connector always dials that instance (TCP, a Unix
//! socket, or a port inside the instance's own network namespace), so requests
//! carry no per-request address lookup.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use super::Address;

/// How long a connect inside a namespace may hold its blocking thread (a
/// loopback connect answers at once unless the listener's queue is full).
const NETNS_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The HTTP client the router and the pool use to talk to one instance.
pub type InstanceClient = Client<InstanceConnector, Body>;

/// Builds the client for the instance at `address`. Request URIs need an
/// authority (any will do: the connector ignores it).
pub fn client(address: Address) -> InstanceClient {
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(InstanceConnector { address })
}

/// Dials one fixed address.
#[derive(Clone, Debug)]
pub struct InstanceConnector {
    address: Address,
}

impl InstanceConnector {
    /// Opens one connection (also used to check that a runtime listens).
    pub async fn dial(address: &Address) -> io::Result<InstanceStream> {
        match address {
            Address::Tcp(a) => {
                let s = TcpStream::connect(a).await?;
                s.set_nodelay(true)?;
                Ok(InstanceStream::Tcp(s))
            }
            Address::Unix(p) => Ok(InstanceStream::Unix(UnixStream::connect(p).await?)),
            Address::NetNs { ns, port } => {
                // Entering a namespace is per thread: do it on a blocking one.
                let ns = ns.clone();
                let port = *port;
                let std = tokio::task::spawn_blocking(move || {
                    crate::sys::connect_in_netns(
                        ns.file(),
                        SocketAddr::from(([127, 0, 0, 1], port)),
                        NETNS_CONNECT_TIMEOUT,
                    )
                })
                .await
                .map_err(io::Error::other)??;
                std.set_nonblocking(true)?;
                let s = TcpStream::from_std(std)?;
                s.set_nodelay(true)?;
                Ok(InstanceStream::Tcp(s))
            }
        }
    }
}

impl tower_service::Service<http::Uri> for InstanceConnector {
    type Response = TokioIo<InstanceStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let address = self.address.clone();
        Box::pin(async move { InstanceConnector::dial(&address).await.map(TokioIo::new) })
    }
}

/// A connection to a runtime over TCP or a Unix socket.
pub enum InstanceStream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Connection for InstanceStream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl AsyncRead for InstanceStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            InstanceStream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            InstanceStream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for InstanceStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            InstanceStream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            InstanceStream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            InstanceStream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            InstanceStream::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            InstanceStream::Tcp(s) => s.is_write_vectored(),
            InstanceStream::Unix(s) => s.is_write_vectored(),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            InstanceStream::Tcp(s) => Pin::new(s).poll_flush(cx),
            InstanceStream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            InstanceStream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            InstanceStream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
