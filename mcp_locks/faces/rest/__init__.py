"""The REST face: ``/v1`` routes and their OpenAPI document."""
