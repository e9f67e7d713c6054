//! What each plugin call does on this host: [`Plugin::call`] dispatches through the pure
//! [`Call`], and the network driver's calls add the netlink and nft work to the book's
//! checks, in an order that leaves the kernel, the rules and the state file agreeing
//! whatever fails (a call that fails changes nothing).

use serde_json::{Value, json};

use super::book::PortBinding;
use super::call::{Call, IpamAnswer, NewEndpoint, NewNetwork, join};
use super::wire::NetworkRef;
use super::{Failure, Plugin, enable_forwarding};

impl Plugin {
    /// One plugin call: `method` is the path without `/`, `body` its JSON.
    pub async fn call(&self, method: &str, body: &[u8]) -> Result<Value, Failure> {
        match Call::parse(method, body)? {
            Call::Fixed(answer) => Ok(answer),
            Call::Ipam(ipam) => {
                let (slices, ranges) = self.slices().unzip();
                let answer = self
                    .change(|b| {
                        ipam.apply(b, slices.as_deref(), ranges.as_deref().unwrap_or_default())
                    })
                    .await?;
                if let IpamAnswer::Pool(g) = &answer {
                    tracing::info!(pool = %g.pool, gateway = %g.gateway, "Docker pool granted");
                }
                Ok(answer.to_json())
            }
            Call::CreateNetwork(req) => self.create_network(req).await,
            Call::DeleteNetwork(req) => self.delete_network(req).await,
            Call::CreateEndpoint(req) => self.create_endpoint(req).await,
            Call::DeleteEndpoint(req) => self.delete_endpoint(req).await,
            Call::Join(req) => {
                let answer = join(&*self.book.lock().await, &req)?;
                serde_json::to_value(answer).map_err(|e| Failure::new(e.to_string()))
            }
            Call::EndpointOperInfo(req) => {
                self.book
                    .lock()
                    .await
                    .endpoint(&req.network_id, &req.endpoint_id)?;
                Ok(json!({"Value": {}}))
            }
            Call::Publish(req, bindings) => {
                self.publish(&req, &bindings).await?;
                Ok(json!({}))
            }
        }
    }

    async fn create_network(&self, req: NewNetwork) -> Result<Value, Failure> {
        let mut book = self.book.lock().await;
        let network = req.check(&book, self.mtu)?;
        self.links
            .ensure_bridge(&network.bridge, network.gateway, network.slice, network.mtu)
            .await?;
        let mut next = book.clone();
        next.add_network(&req.network_id, network.clone());
        // No network without its isolation: if the rules cannot be set, undo the bridge.
        if let Err(e) = self.isolate(&next).await {
            let _ = self.links.delete(&network.bridge).await;
            if let Err(undo) = self.isolate(&book).await {
                tracing::warn!(error = %format!("{undo:#}"), "cannot put the isolation rules back as they were");
            }
            return Err(Failure::new(format!(
                "overlayd cannot set the rules that keep Docker networks apart: {e:#}; the network was not created"
            )));
        }
        enable_forwarding();
        if let Err(e) = self.save(&next) {
            let _ = self.links.delete(&network.bridge).await;
            let _ = self.isolate(&book).await;
            return Err(e);
        }
        *book = next;
        let range = network.range.map(|r| r.to_string()).unwrap_or_default();
        tracing::info!(network = %req.network_id, bridge = %network.bridge, subnet = %network.slice, range, mtu = network.mtu, "Docker network created");
        Ok(json!({}))
    }

    async fn delete_network(&self, req: NetworkRef) -> Result<Value, Failure> {
        let mut book = self.book.lock().await;
        let mut next = book.clone();
        let Some(network) = next.remove_network(&req.network_id) else {
            return Ok(json!({}));
        };
        for e in book
            .endpoints
            .values()
            .filter(|e| e.network == req.network_id)
        {
            self.links.delete(&e.host_veth).await?;
        }
        self.links.delete(&network.bridge).await?;
        self.save(&next)?;
        // Rules left for a bridge that is gone match nothing: log, do not fail the removal.
        if let Err(e) = self.isolate(&next).await {
            tracing::warn!(error = %format!("{e:#}"), "cannot update the isolation rules between Docker networks after a removal");
        }
        *book = next;
        tracing::info!(network = %req.network_id, bridge = %network.bridge, "Docker network removed");
        Ok(json!({}))
    }

    async fn create_endpoint(&self, req: NewEndpoint) -> Result<Value, Failure> {
        let mut book = self.book.lock().await;
        let endpoint = req.check(&book)?;
        let n = book.network(&req.network_id)?.clone();
        // The bridge may be gone (a reboot, a hand deletion): make it again.
        let bridge = self
            .links
            .ensure_bridge(&n.bridge, n.gateway, n.slice, n.mtu)
            .await?;
        self.links
            .create_veth(&endpoint.host_veth, &endpoint.container_veth, n.mtu, bridge)
            .await?;
        let mut next = book.clone();
        next.add_endpoint(&req.endpoint_id, endpoint.clone());
        if let Err(e) = self.save(&next) {
            let _ = self.links.delete(&endpoint.host_veth).await;
            return Err(e);
        }
        *book = next;
        tracing::debug!(network = %req.network_id, container = %endpoint.address, "Docker endpoint created");
        Ok(json!({}))
    }

    async fn delete_endpoint(&self, req: NetworkRef) -> Result<Value, Failure> {
        let mut book = self.book.lock().await;
        let mut next = book.clone();
        let Some(endpoint) = next.remove_endpoint(&req.endpoint_id) else {
            return Ok(json!({}));
        };
        // The kernel removes the peer with it (libnetwork has moved it back by now).
        self.links.delete(&endpoint.host_veth).await?;
        self.links.delete(&endpoint.container_veth).await?;
        self.save(&next)?;
        *book = next;
        if !endpoint.published.is_empty()
            && let Err(e) = self.isolate(&book).await
        {
            tracing::error!(error = %format!("{e:#}"), "cannot remove a removed container's published ports from the nft rules; they go with the next change");
        }
        Ok(json!({}))
    }

    /// `-p`: makes the endpoint publish `bindings` (none: stop publishing), in the book and
    /// then in the nft rules; if the rules cannot be set, the book goes back as it was.
    async fn publish(&self, req: &NetworkRef, bindings: &[PortBinding]) -> Result<(), Failure> {
        let mut book = self.book.lock().await;
        if bindings.is_empty()
            && book
                .endpoints
                .get(&req.endpoint_id)
                .is_none_or(|e| e.published.is_empty())
        {
            return Ok(());
        }
        let before = book.clone();
        let mut next = book.clone();
        next.publish(&req.network_id, &req.endpoint_id, bindings)?;
        if next == *book {
            return Ok(());
        }
        self.save(&next)?;
        *book = next;
        if let Err(e) = self.isolate(&book).await {
            let _ = self.save(&before);
            *book = before;
            return Err(Failure::new(format!(
                "cannot publish the container's ports: {e:#}"
            )));
        }
        Ok(())
    }
}
