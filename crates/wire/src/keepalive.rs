//! The keepalive ping clients send on an idle chat connection: an `iq` that chatd answers with an
//! empty result. Clients send it, the proxy relays it like any stanza.

use crate::{Jid, Node, Server};

/// `<iq id="{id}" xmlns="w:p" type="get" to="s.whatsapp.net"/>`, as clients send it.
pub fn ping(id: &str) -> Node {
    Node::new("iq").attr("id", id).attr("xmlns", "w:p").attr("type", "get").attr("to", Jid::server(Server::Whatsapp))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_has_the_shape_chatd_answers() {
        let node = crate::decode::decode(&crate::encode::encode(&ping("k1")).unwrap()).unwrap();
        assert_eq!(node.tag, "iq");
        assert_eq!(
            (node.get_str("id"), node.get_str("xmlns"), node.get_str("type")),
            (Some("k1"), Some("w:p"), Some("get"))
        );
        assert_eq!(node.get("to").and_then(|v| v.as_jid()), Some(&Jid::server(Server::Whatsapp)));
    }
}
