# ruff: noqa
# fmt: off
# The API document's own Python client ("Client Integration Examples" > "Python (MCP Brain Service)"
# in task-service-api.md), copied verbatim: tests/test_client.py checks that it works unchanged
# against taskd. Do not edit or reformat it.
# mcp_brain_service/services/task_client.py
import httpx
import asyncio
import os
from typing import Dict, Any, Optional, Callable

class TaskServiceClient:
    def __init__(self):
        self.base_url = os.getenv('TASK_SERVICE_URL', 'http://localhost:8001')
        self.api_key = os.getenv('CELERY_TASK_API_KEY', '')
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(60.0),
            headers={'X-API-Key': self.api_key}
        )
    
    async def submit_task(
        self, 
        project_id: str,
        task_type: str,
        task_data: Dict[str, Any],
        priority: int = 2,
        metadata: Optional[Dict[str, Any]] = None
    ) -> Dict[str, Any]:
        """Submit a new task for processing"""
        
        payload = {
            'project_id': project_id,
            'task_type': task_type,
            'task_data': task_data,
            'priority': priority,
            'metadata': metadata or {}
        }
        
        response = await self.client.post(
            f'{self.base_url}/api/v1/tasks/submit',
            json=payload
        )
        
        response.raise_for_status()
        return response.json()
    
    async def get_task_status(self, task_id: str) -> Dict[str, Any]:
        """Get current task status"""
        
        response = await self.client.get(
            f'{self.base_url}/api/v1/tasks/{task_id}/status'
        )
        
        response.raise_for_status()
        return response.json()
    
    async def wait_for_completion(
        self,
        task_id: str,
        timeout: int = 600,  # 10 minutes
        poll_interval: int = 2
    ) -> Dict[str, Any]:
        """Wait for task to complete with timeout"""
        
        start_time = asyncio.get_event_loop().time()
        
        while True:
            status = await self.get_task_status(task_id)
            
            if status['status'] == 'completed':
                return status
            elif status['status'] == 'failed':
                raise Exception(f"Task failed: {status.get('error', 'Unknown error')}")
            elif status['status'] == 'cancelled':
                raise Exception("Task was cancelled")
            
            # Check timeout
            if asyncio.get_event_loop().time() - start_time > timeout:
                raise Exception(f"Task timeout after {timeout} seconds")
            
            await asyncio.sleep(poll_interval)
    
    async def close(self):
        """Close HTTP client"""
        await self.client.aclose()
