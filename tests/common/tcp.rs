//! A TCP connection between two namespaces, made by the test process itself: its sockets
//! live in those namespaces' stacks, not in netd, so it shows whether a path through netd
//! survives what happens to netd.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

/// Both ends of one connection.
pub struct Connection {
    pub client: TcpStream,
    pub server: TcpStream,
}

impl Connection {
    /// Listen on `address` in `server_ns`, connect to it from `client_ns`.
    pub fn open(client_ns: &str, server_ns: &str, address: &str) -> Connection {
        let address: SocketAddr = address.parse().expect("socket address");
        let listener =
            netd::kernel::netns::run_in(server_ns, || TcpListener::bind(address)).expect("listen");
        let client = netd::kernel::netns::run_in(client_ns, || {
            TcpStream::connect_timeout(&address, Duration::from_secs(5))
        })
        .expect("connect");
        let (server, _) = listener.accept().expect("accept");
        for stream in [&client, &server] {
            stream
                .set_read_timeout(Some(Duration::from_secs(20)))
                .unwrap();
        }
        Connection { client, server }
    }

    /// Send `message` both ways; panic with `when` if it does not arrive intact.
    pub fn exchange(&mut self, message: &[u8], when: &str) {
        for (from, to) in [(0, 1), (1, 0)] {
            let mut streams = [&self.client, &self.server];
            streams[from].write_all(message).expect(when);
            let mut got = vec![0; message.len()];
            streams[to]
                .read_exact(&mut got)
                .unwrap_or_else(|e| panic!("{when}: {e}"));
            assert_eq!(got, message, "{when}");
        }
    }
}
