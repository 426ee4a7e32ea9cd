"""Bedrock: Anthropic Messages served through AWS Bedrock.

``translate`` builds the InvokeModel request from an Anthropic one (pure);
``stream`` turns Bedrock's event stream and errors back into what an Anthropic
client expects (sans-io). Credentials and signing live in
``relay.upstream.aws``; the request handlers call these pieces.
"""
