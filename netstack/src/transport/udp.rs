//! std UdpSocket runner (todo)
