//! A DNS server on loopback whose answers the test changes: the stand-in for a Kubernetes
//! headless Service (CoreDNS answers its name with one A record per ready pod).
//!
//! It runs in-process on the caller's tokio runtime (hickory-server over one UDP socket) and stops
//! when dropped. Names it knows get their A records (TTL 1 s), or an empty NOERROR answer when the
//! set is empty or another record type is asked for; unknown names get NXDOMAIN.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Metadata, ResponseCode};
use hickory_server::proto::rr::{rdata::A, Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use hickory_server::Server;

type Zone = Arc<Mutex<HashMap<String, Vec<Ipv4Addr>>>>;

/// Normalise a DNS name for lookup: lower case, no trailing dot.
fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

struct Handler {
    zone: Zone,
    queries: Arc<std::sync::atomic::AtomicU64>,
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        self.queries
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let builder = MessageResponseBuilder::from_message_request(request);
        let mut meta = Metadata::response_from_request(&request.metadata);
        meta.authoritative = true;
        let info = match request.request_info() {
            Ok(i) => i,
            Err(_) => {
                meta.response_code = ResponseCode::FormErr;
                return send(&mut response_handle, builder.build_no_records(meta)).await;
            }
        };
        let qname: Name = info.query.name().clone().into();
        let qtype = info.query.query_type();
        let answer: Option<Vec<Ipv4Addr>> = self
            .zone
            .lock()
            .expect("zone lock")
            .get(&key(&qname.to_ascii()))
            .cloned();
        let Some(ips) = answer else {
            meta.response_code = ResponseCode::NXDomain;
            return send(&mut response_handle, builder.build_no_records(meta)).await;
        };
        let records: Vec<Record> = if qtype == RecordType::A {
            ips.iter()
                .map(|ip| Record::from_rdata(qname.clone(), 1, RData::A(A(*ip))))
                .collect()
        } else {
            Vec::new()
        };
        let resp = builder.build(meta, records.iter(), [], [], []);
        match response_handle.send_response(resp).await {
            Ok(i) => i,
            Err(_) => serve_failed(request),
        }
    }
}

fn serve_failed(request: &Request) -> ResponseInfo {
    let mut meta = Metadata::response_from_request(&request.metadata);
    meta.response_code = ResponseCode::ServFail;
    hickory_server::proto::op::Header {
        metadata: meta,
        counts: Default::default(),
    }
    .into()
}

async fn send<'a, R: ResponseHandler>(
    handle: &mut R,
    resp: hickory_server::zone_handler::MessageResponse<
        '_,
        'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
    >,
) -> ResponseInfo {
    let meta = *resp.metadata();
    match handle.send_response(resp).await {
        Ok(i) => i,
        Err(_) => hickory_server::proto::op::Header {
            metadata: meta,
            counts: Default::default(),
        }
        .into(),
    }
}

/// A running DNS server on `127.0.0.1:<udp port>`. Dropping it stops it.
pub struct DnsServer {
    /// The UDP address it answers on.
    pub addr: SocketAddr,
    zone: Zone,
    queries: Arc<std::sync::atomic::AtomicU64>,
    server: Server<Handler>,
}

impl DnsServer {
    /// Start on a free loopback UDP port. Needs a tokio runtime.
    pub async fn start() -> DnsServer {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind dns socket");
        let addr = socket.local_addr().expect("dns addr");
        let zone: Zone = Arc::default();
        let queries = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut server = Server::new(Handler {
            zone: zone.clone(),
            queries: queries.clone(),
        });
        server.register_socket(socket);
        DnsServer {
            addr,
            zone,
            queries,
            server,
        }
    }

    /// Answer `name` with these A records from now on (replacing the previous set).
    pub fn set(&self, name: &str, ips: &[Ipv4Addr]) {
        self.zone
            .lock()
            .expect("zone lock")
            .insert(key(name), ips.to_vec());
    }

    /// Queries answered so far (any name, any type).
    pub fn queries(&self) -> u64 {
        self.queries.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        // Cancels the UDP task; dropping `server` (its JoinSet) aborts whatever is left.
        self.server.shutdown_token().cancel();
    }
}
