//! `tcp_proxy <target>`: forwards every connection made to it to `target`
//! (`host:port`), printing its own address first. Tests freeze it with SIGSTOP
//! to cut a node off from the GCS without closing any connection.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};

fn pump(mut from: TcpStream, mut to: TcpStream) {
    let mut buffer = [0u8; 64 << 10];
    loop {
        match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(read) => {
                if to.write_all(&buffer[..read]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

fn main() {
    let target = std::env::args().nth(1).expect("usage: tcp_proxy <host:port>");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    println!("{}", listener.local_addr().expect("local address"));
    for client in listener.incoming().flatten() {
        let Ok(upstream) = TcpStream::connect(&target) else { continue };
        let (Ok(client_copy), Ok(upstream_copy)) = (client.try_clone(), upstream.try_clone()) else { continue };
        std::thread::spawn(move || pump(client, upstream));
        std::thread::spawn(move || pump(upstream_copy, client_copy));
    }
}
